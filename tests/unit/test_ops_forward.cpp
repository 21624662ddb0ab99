// Forward passes of the CPU ops against independent, straightforward formulas written here
// (naive loops, complex rotation for rope, the tanh formula for GELU, log-sum-exp by hand, a hand
// AdamW step), plus float-vs-double agreement. Sizes include some above the threading threshold.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "gradcheck.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/pool.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace {

using namespace smt::cpu;
namespace gc = smt::gradcheck;
using Vec = std::vector<double>;

std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

double gelu_ref(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

// max |a - b| / max(1, |b|)
template <typename A, typename B>
double max_err(const std::vector<A>& a, const std::vector<B>& b) {
  double e = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::fabs(double(a[i]) - double(b[i])) / std::max(1.0, std::fabs(double(b[i]))));
  return a.size() == b.size() ? e : INFINITY;
}

TEST(OpsForward, LinearMatchesNaiveLoops) {
  const int64_t M = 37, n_in = 19, n_out = 23;
  const Vec x = gc::random_vector(M * n_in, 1), w = gc::random_vector(n_in * n_out, 2), b = gc::random_vector(n_out, 3);
  const Vec y0 = gc::random_vector(M * n_out, 4);
  Vec ref(M * n_out);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < n_out; ++j) {
      double s = 0.0;
      for (int64_t l = 0; l < n_in; ++l) s += x[i * n_in + l] * w[l * n_out + j];
      ref[i * n_out + j] = s;
    }
  Vec y(M * n_out, 123.0);
  linear_forward<double>(y.data(), x.data(), w.data(), nullptr, M, n_in, n_out);
  EXPECT_LT(max_err(y, ref), 1e-13);
  linear_forward(y.data(), x.data(), w.data(), b.data(), M, n_in, n_out);
  Vec ref_b = ref;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < n_out; ++j) ref_b[i * n_out + j] += b[j];
  EXPECT_LT(max_err(y, ref_b), 1e-13);
  y = y0;  // accumulate: y = y0 + x W + b
  linear_forward(y.data(), x.data(), w.data(), b.data(), M, n_in, n_out, /*accumulate=*/true);
  Vec ref_acc = ref_b;
  for (size_t i = 0; i < ref_acc.size(); ++i) ref_acc[i] += y0[i];
  EXPECT_LT(max_err(y, ref_acc), 1e-13);
  // float agrees with double
  auto xf = to_float(x), wf = to_float(w), bf = to_float(b);
  std::vector<float> yf(M * n_out);
  linear_forward(yf.data(), xf.data(), wf.data(), bf.data(), M, n_in, n_out);
  EXPECT_LT(max_err(yf, ref_b), 1e-5);
}

TEST(OpsForward, LinearBackwardBiasIsColumnSumAtThreadedSize) {
  const int64_t M = 700, n_out = 130;  // M * 64 columns exceeds the parallel threshold
  const Vec dy = gc::random_vector(M * n_out, 5);
  Vec db(n_out, 1.0), ref(n_out, 1.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < n_out; ++j) ref[j] += dy[i * n_out + j];
  Vec x(M * 2, 1.0), w(2 * n_out, 1.0);
  linear_backward<double>(nullptr, nullptr, db.data(), dy.data(), x.data(), w.data(), M, 2, n_out);
  EXPECT_LT(max_err(db, ref), 1e-12);
}

TEST(OpsForward, MatmulTransposedMatchesNaiveLoops) {
  const int64_t M = 11, k = 13, n = 17;
  const Vec x = gc::random_vector(M * k, 6), w = gc::random_vector(n * k, 7);
  Vec ref(M * n);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t l = 0; l < k; ++l) s += x[i * k + l] * w[j * k + l];
      ref[i * n + j] = s;
    }
  Vec y(M * n, -5.0);
  matmul_transposed_forward(y.data(), x.data(), w.data(), M, k, n);
  EXPECT_LT(max_err(y, ref), 1e-13);
  auto xf = to_float(x), wf = to_float(w);
  std::vector<float> yf(M * n);
  matmul_transposed_forward(yf.data(), xf.data(), wf.data(), M, k, n);
  EXPECT_LT(max_err(yf, ref), 1e-5);
}

TEST(OpsForward, EmbeddingCopiesRowsAndRejectsNegativeIds) {
  const int64_t V = 5, d = 3;
  const std::vector<int32_t> tokens = {4, 0, 4, 2};
  const Vec table = gc::random_vector(V * d, 8);
  Vec out(tokens.size() * d);
  embedding_forward(out.data(), tokens.data(), table.data(), int64_t(tokens.size()), d);
  for (size_t t = 0; t < tokens.size(); ++t)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(out[t * d + j], table[tokens[t] * d + j]);
  const std::vector<int32_t> bad = {1, -3};
  EXPECT_THROW(embedding_forward(out.data(), bad.data(), table.data(), 2, d), smt::Error);
}

TEST(OpsForward, EmbeddingBackwardScatterAddsAtThreadedSize) {
  const int64_t V = 7, T = 1000, d = 70;
  std::vector<int32_t> tokens(T);
  for (int64_t t = 0; t < T; ++t) tokens[t] = int32_t((t * 5 + 3) % V);
  const Vec dout = gc::random_vector(T * d, 9);
  Vec dtable(V * d, 0.5), ref(V * d, 0.5);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < d; ++j) ref[tokens[t] * d + j] += dout[t * d + j];
  embedding_backward(dtable.data(), dout.data(), tokens.data(), T, d);
  EXPECT_LT(max_err(dtable, ref), 1e-12);
}

TEST(OpsForward, RmsNormMatchesFormula) {
  for (int64_t T : {3, 1200}) {  // 1200 x 64 runs threaded
    const int64_t d = 64;
    const double eps = 1e-6;
    const Vec x = gc::random_vector(T * d, 10, 3.0), w = gc::random_vector(d, 11, 2.0);
    Vec out(T * d), rstd(T);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, d, eps);
    double err = 0.0;
    for (int64_t t = 0; t < T; ++t) {
      double ms = 0.0;
      for (int64_t j = 0; j < d; ++j) ms += x[t * d + j] * x[t * d + j];
      ms /= double(d);
      const double r = 1.0 / std::sqrt(ms + eps);
      EXPECT_NEAR(rstd[t], r, 1e-14 * r);
      for (int64_t j = 0; j < d; ++j) err = std::max(err, std::fabs(out[t * d + j] - x[t * d + j] * r * w[j]));
    }
    EXPECT_LT(err, 1e-13);
    auto xf = to_float(x), wf = to_float(w);
    std::vector<float> of(T * d), rf(T);
    rmsnorm_forward(of.data(), rf.data(), xf.data(), wf.data(), T, d, 1e-6f);
    EXPECT_LT(max_err(of, out), 1e-5);
  }
  // eps matters for a tiny row
  const Vec tiny(8, 1e-4), w1(8, 1.0);
  Vec o(8), r(1);
  rmsnorm_forward(o.data(), r.data(), tiny.data(), w1.data(), 1, 8, 1e-6);
  EXPECT_NEAR(r[0], 1.0 / std::sqrt(1e-8 + 1e-6), 1e-9);
}

// out vs the complex rotation (x[i] + i x[i+half]) * exp(i n theta^(-2i/hd)), max abs error.
double rope_error_vs_complex(int64_t B, int64_t N, int64_t H, int64_t hd, double theta, uint64_t seed) {
  const int64_t half = hd / 2;
  const Vec x = gc::random_vector(B * N * H * hd, seed);
  Vec out(x.size());
  rope_forward(out.data(), x.data(), B, N, H, hd, theta);
  double err = 0.0;
  for (int64_t bn = 0; bn < B * N; ++bn)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t base = (bn * H + h) * hd;
        const std::complex<double> r = std::complex<double>(x[base + i], x[base + i + half]) *
                                       std::polar(1.0, double(bn % N) / std::pow(theta, double(2 * i) / double(hd)));
        err = std::max({err, std::fabs(out[base + i] - r.real()), std::fabs(out[base + i + half] - r.imag())});
      }
  return err;
}

TEST(OpsForward, RopeTableCacheFollowsLengthDimAndTheta) {
  // The cos/sin table is cached per thread: alternate lengths, head dims and thetas.
  EXPECT_LT(rope_error_vs_complex(1, 40, 2, 8, 10000.0, 1), 1e-12);
  EXPECT_LT(rope_error_vs_complex(2, 7, 1, 8, 10000.0, 2), 1e-12);   // shorter: served by the same table
  EXPECT_LT(rope_error_vs_complex(1, 7, 1, 8, 500.0, 3), 1e-12);     // new theta
  EXPECT_LT(rope_error_vs_complex(1, 90, 1, 8, 500.0, 4), 1e-12);    // longer
  EXPECT_LT(rope_error_vs_complex(1, 90, 1, 12, 500.0, 5), 1e-12);   // new head dim
  EXPECT_LT(rope_error_vs_complex(3, 20, 2, 8, 10000.0, 6), 1e-12);  // back to the first
}

TEST(OpsForward, RopeMatchesComplexRotation) {
  const int64_t B = 2, N = 300, H = 3, hd = 16, half = hd / 2;  // B*N rows of H*hd: threaded
  const double theta = 10000.0;
  const Vec x = gc::random_vector(B * N * H * hd, 12);
  Vec out(x.size());
  rope_forward(out.data(), x.data(), B, N, H, hd, theta);
  double err = 0.0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((b * N + n) * H + h) * hd;
        double norm_in = 0.0, norm_out = 0.0;
        for (int64_t i = 0; i < half; ++i) {
          const double freq = 1.0 / std::pow(theta, double(2 * i) / double(hd));
          const std::complex<double> z(x[base + i], x[base + i + half]);
          const std::complex<double> r = z * std::polar(1.0, double(n) * freq);
          err = std::max({err, std::fabs(out[base + i] - r.real()), std::fabs(out[base + i + half] - r.imag())});
          norm_in += std::norm(z);
          norm_out += out[base + i] * out[base + i] + out[base + i + half] * out[base + i + half];
        }
        EXPECT_NEAR(norm_out, norm_in, 1e-12 * norm_in);
        if (n == 0) {
          for (int64_t i = 0; i < hd; ++i) EXPECT_DOUBLE_EQ(out[base + i], x[base + i]);
        }
      }
  EXPECT_LT(err, 1e-12);
  // Backward is the inverse rotation: rope_backward(rope_forward(x)) == x.
  Vec back(x.size(), 0.0);
  rope_backward(back.data(), out.data(), B, N, H, hd, theta);
  EXPECT_LT(max_err(back, x), 1e-12);
  // In place and float.
  Vec inplace = x;
  rope_forward(inplace.data(), inplace.data(), B, N, H, hd, theta);
  EXPECT_EQ(inplace, out);
  auto xf = to_float(x);
  std::vector<float> of(x.size());
  rope_forward(of.data(), xf.data(), B, N, H, hd, 10000.0f);
  EXPECT_LT(max_err(of, out), 1e-6);
  std::vector<float> odd(4);
  EXPECT_THROW(rope_forward(odd.data(), xf.data(), 1, 1, 1, 3, 10000.0f), smt::Error);
}

TEST(OpsForward, GeluMatchesTanhFormula) {
  const int64_t n = 100000;  // threaded
  Vec x = gc::random_vector(n, 13, 6.0, 1e-4);
  x[0] = 30.0;
  x[1] = -30.0;
  x[2] = 1e-5;
  Vec out(n);
  gelu_forward(out.data(), x.data(), n);
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i) err = std::max(err, std::fabs(out[i] - gelu_ref(x[i])));
  EXPECT_LT(err, 1e-14);
  // Float (fast rational tanh): |error| <= 1e-6 * max(1, |x|): tanh error ~1e-7 times 0.5 |x|, plus
  // float rounding of the cubic.
  auto xf = to_float(x);
  std::vector<float> of(n);
  gelu_forward(of.data(), xf.data(), n);
  double errf = 0.0;
  for (int64_t i = 0; i < n; ++i)
    errf = std::max(errf, std::fabs(of[i] - gelu_ref(double(xf[i]))) / std::max(1.0, std::fabs(double(xf[i]))));
  EXPECT_LT(errf, 1e-6);
  EXPECT_EQ(of[0], 30.0f);  // tanh saturates to exactly +-1
  EXPECT_EQ(of[1], 0.0f);
  // NaN propagates both in the vector body (index 0) and in the scalar tail (index 8 of 9).
  std::vector<float> nan_in(9, 1.0f), nan_out(9);
  nan_in[0] = NAN;
  nan_in[8] = NAN;
  gelu_forward(nan_out.data(), nan_in.data(), 9);
  EXPECT_TRUE(std::isnan(nan_out[0]));
  EXPECT_TRUE(std::isnan(nan_out[8]));
  EXPECT_FALSE(std::isnan(nan_out[4]));
}

TEST(OpsForward, GeluFloatDoesNotDependOnPositionInTheArray) {
  // The same value gives the same bits in a vector body and in a scalar tail.
  const auto xd = gc::random_vector(1003, 27, 6.0, 1e-3);
  const std::vector<float> x(xd.begin(), xd.end());
  std::vector<float> all(x.size());
  gelu_forward(all.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); i += 37) {
    float one = 0.0f;
    gelu_forward(&one, &x[i], 1);
    EXPECT_EQ(one, all[i]) << i;
    float g_all = 0.0f, g_one = 0.0f, up = 1.0f;
    std::vector<float> g8(8, 0.0f), ups(8, 1.0f), x8(8, x[i]);
    gelu_backward(g8.data(), ups.data(), x8.data(), 8);
    gelu_backward(&g_one, &up, &x[i], 1);
    g_all = g8[3];
    EXPECT_EQ(g_one, g_all) << i;
  }
}

TEST(OpsForward, FastTanhIsAccurate) {
  double err = 0.0;
  for (double v = -12.0; v <= 12.0; v += 1.0 / 1024.0) {
    const float xf = float(v);
    err = std::max(err, std::fabs(double(fast_tanh(xf)) - std::tanh(double(xf))));
  }
  EXPECT_LT(err, 3.5e-7);  // 3.0e-7 with FMA contraction (release, x86-64-v3); 3.01e-7 without (debug, asan presets)
  EXPECT_EQ(fast_tanh(0.0f), 0.0f);
  EXPECT_NEAR(fast_tanh(1e-5f), 1e-5f, 3e-7f * 1e-5f);  // relative accuracy near 0
  EXPECT_EQ(fast_tanh(100.0f), 1.0f);                    // saturates exactly
  EXPECT_EQ(fast_tanh(-100.0f), -1.0f);
  for (float v = 0.0f; v < 20.0f; v += 0.01f) EXPECT_LE(std::fabs(fast_tanh(v)), 1.0f) << v;
  EXPECT_TRUE(std::isnan(fast_tanh(NAN)));
}

TEST(OpsForward, GeluBackwardFloatMatchesDoubleDerivative) {
  const int64_t n = 50000;
  const Vec x = gc::random_vector(n, 14, 5.0, 1e-3), g = gc::random_vector(n, 15);
  const double pi = 3.14159265358979323846, c = std::sqrt(2.0 / pi);
  auto xf = to_float(x), gf = to_float(g);
  std::vector<float> dxf(n, 0.25f);
  gelu_backward(dxf.data(), gf.data(), xf.data(), n);
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double xi = xf[i], t = std::tanh(c * (xi + 0.044715 * xi * xi * xi));
    const double dgelu = 0.5 * (1 + t) + 0.5 * xi * (1 - t * t) * c * (1 + 3 * 0.044715 * xi * xi);
    err = std::max(err, std::fabs(double(dxf[i]) - (0.25 + dgelu * double(gf[i]))));
  }
  // 1e-5: in float, 1 - tanh(u)^2 cancels near |u| ~ 8 (tanh within 6e-8 of 1), and the term is multiplied
  // by ~0.5 x c (1 + 0.134 x^2) ~ 8 at x ~ 4.8; measured worst case ~4e-6 (PyTorch's float formula shares it).
  EXPECT_LT(err, 1e-5);
}

TEST(OpsForward, CrossEntropyMatchesLogSumExpByHand) {
  const int64_t M = 5, C = 4;
  Vec logits = gc::random_vector(M * C, 16, 4.0);
  logits[3 * C + 0] = 1000.0;  // would overflow a naive exp
  logits[3 * C + 1] = 1001.0;
  const std::vector<int32_t> targets = {0, -1, 3, 1, 2};
  Vec probs(M * C);
  int64_t num_valid = -1;
  const double loss = cross_entropy_forward(probs.data(), logits.data(), targets.data(), M, C, &num_valid);
  EXPECT_EQ(num_valid, 4);
  double ref = 0.0;
  for (int64_t i = 0; i < M; ++i) {
    double mx = -INFINITY;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, logits[i * C + c]);
    double s = 0.0;
    for (int64_t c = 0; c < C; ++c) s += std::exp(logits[i * C + c] - mx);
    const double lse = mx + std::log(s);
    double row_sum = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      EXPECT_NEAR(probs[i * C + c], std::exp(logits[i * C + c] - mx) / s, 1e-15);
      row_sum += probs[i * C + c];
    }
    EXPECT_NEAR(row_sum, 1.0, 1e-14);
    if (targets[i] >= 0) ref += lse - logits[i * C + targets[i]];
  }
  EXPECT_NEAR(loss, ref, 1e-12 * std::fabs(ref));
  EXPECT_NEAR(loss - ref, 0.0, 1e-10);
  EXPECT_TRUE(std::isfinite(loss));
  // float: same loss to float accuracy
  auto lf = to_float(logits);
  std::vector<float> pf(M * C);
  const double lossf = cross_entropy_forward(pf.data(), lf.data(), targets.data(), M, C, nullptr);
  EXPECT_NEAR(lossf, ref, 1e-4);
  EXPECT_LT(max_err(pf, probs), 1e-6);
  const std::vector<int32_t> bad = {0, 4, 0, 0, 0};
  EXPECT_THROW(cross_entropy_forward(probs.data(), logits.data(), bad.data(), M, C, nullptr), smt::Error);
}

TEST(OpsForward, CrossEntropyFloatMatchesDoubleOnWideRows) {
  // Rows wider than the 8-lane vector body plus a tail, logits spread over a wide range, threaded size.
  const int64_t M = 300, C = 261;
  const Vec z = gc::random_vector(M * C, 28, 30.0, 1e-3);
  std::vector<int32_t> targets(M);
  for (int64_t i = 0; i < M; ++i) targets[i] = int32_t((i * 7) % C);
  targets[5] = -1;
  Vec pd(M * C);
  const double ld = cross_entropy_forward(pd.data(), z.data(), targets.data(), M, C, nullptr);
  auto zf = to_float(z);
  std::vector<float> pf(M * C);
  const double lf = cross_entropy_forward(pf.data(), zf.data(), targets.data(), M, C, nullptr);
  double err = 0.0;
  for (int64_t i = 0; i < M * C; ++i) err = std::max(err, std::fabs(double(pf[i]) - pd[i]) / std::max(pd[i], 1e-30));
  EXPECT_LT(err, 2e-5);  // relative, every probability down to 1e-26: float rounding of z - max (|z| <= 30)
  EXPECT_NEAR(lf, ld, 1e-6 * std::fabs(ld));
}

TEST(OpsForward, MeanPoolAveragesValidPositions) {
  const int64_t B = 3, N = 5, d = 4;
  const std::vector<uint8_t> valid = {1, 0, 1, 1, 0, /**/ 0, 0, 0, 0, 0, /**/ 1, 1, 1, 1, 1};
  const Vec x = gc::random_vector(B * N * d, 17);
  Vec out(B * d, 7.0);
  mean_pool_forward(out.data(), x.data(), valid.data(), B, N, d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < d; ++j) {
      double s = 0.0;
      int cnt = 0;
      for (int64_t n = 0; n < N; ++n)
        if (valid[b * N + n]) {
          s += x[(b * N + n) * d + j];
          ++cnt;
        }
      EXPECT_NEAR(out[b * d + j], cnt ? s / cnt : 0.0, 1e-15);
    }
}

TEST(OpsForward, AdamWStepsMatchHandComputation) {
  const int64_t n = 40000;  // threaded
  AdamWParams hp;
  hp.lr = 3e-3f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;
  const float grad_scale = 0.5f;
  std::vector<float> p = to_float(gc::random_vector(n, 18)), m(n, 0.0f), v(n, 0.0f);
  std::vector<double> pd(p.begin(), p.end()), md(n, 0.0), vd(n, 0.0);
  for (int64_t step = 1; step <= 3; ++step) {
    const std::vector<float> g = to_float(gc::random_vector(n, 100 + step, 2.0));
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp, step, grad_scale);
    const double b1 = hp.beta1, b2 = hp.beta2;
    for (int64_t i = 0; i < n; ++i) {
      const double gi = double(g[i]) * grad_scale;
      md[i] = b1 * md[i] + (1 - b1) * gi;
      vd[i] = b2 * vd[i] + (1 - b2) * gi * gi;
      const double mhat = md[i] / (1 - std::pow(b1, double(step)));
      const double vhat = vd[i] / (1 - std::pow(b2, double(step)));
      pd[i] = pd[i] - double(hp.lr) * (double(hp.weight_decay) * pd[i] + mhat / (std::sqrt(vhat) + double(hp.eps)));
    }
    double ep = 0.0, em = 0.0, ev = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ep = std::max(ep, std::fabs(p[i] - pd[i]));
      em = std::max(em, std::fabs(m[i] - md[i]));
      ev = std::max(ev, std::fabs(v[i] - vd[i]) / vd[i]);
    }
    EXPECT_LT(ep, 2e-6) << "step " << step;
    EXPECT_LT(em, 1e-6) << "step " << step;
    EXPECT_LT(ev, 1e-5) << "step " << step;
  }
  // First step, no decay: |update| == lr (bias-corrected m/sqrt(v) = sign(g)), up to eps.
  std::vector<float> q = {1.0f, -2.0f}, gq = {0.3f, -5.0f}, mq(2, 0.0f), vq(2, 0.0f);
  AdamWParams plain;
  plain.lr = 0.01f;
  adamw_update(q.data(), gq.data(), mq.data(), vq.data(), 2, plain, 1, 1.0f);
  EXPECT_NEAR(q[0], 1.0f - 0.01f, 1e-6f);
  EXPECT_NEAR(q[1], -2.0f + 0.01f, 1e-6f);
}

TEST(OpsForward, SumSquaresIsDoubleAndDeterministic) {
  const int64_t n = 300001;
  const std::vector<float> x = to_float(gc::random_vector(n, 19, 3.0));
  double ref = 0.0;
  for (float xi : x) ref += double(xi) * double(xi);
  const double s = sum_squares(x.data(), n);
  EXPECT_NEAR(s, ref, 1e-12 * ref);
  const int saved = smt::num_threads();
  smt::set_num_threads(1);
  const double s1 = sum_squares(x.data(), n);
  smt::set_num_threads(2);
  const double s2 = sum_squares(x.data(), n);
  smt::set_num_threads(saved);
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(sum_squares(x.data(), 0), 0.0);
}

TEST(OpsForward, RouterSoftmaxAndLogSumExpByHand) {
  const int64_t T = 9, E = 6, k = 2;
  const Vec z = gc::random_vector(T * E, 20, 5.0);
  Vec probs(T * E), w(T * k), lse(T);
  std::vector<int32_t> idx(T * k);
  router_topk_forward(probs.data(), idx.data(), w.data(), lse.data(), z.data(), T, E, k);
  for (int64_t t = 0; t < T; ++t) {
    double s = 0.0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(z[t * E + e]);
    EXPECT_NEAR(lse[t], std::log(s), 1e-13);
    for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(probs[t * E + e], std::exp(z[t * E + e]) / s, 1e-15);
    const double p0 = probs[t * E + idx[t * k]], p1 = probs[t * E + idx[t * k + 1]];
    EXPECT_NEAR(w[t * k], p0 / (p0 + p1), 1e-15);
  }
  auto zf = to_float(z);
  std::vector<float> pf(T * E), wf(T * k), lf(T);
  std::vector<int32_t> idxf(T * k);
  router_topk_forward(pf.data(), idxf.data(), wf.data(), lf.data(), zf.data(), T, E, k);
  EXPECT_EQ(idxf, idx);
  EXPECT_LT(max_err(pf, probs), 1e-6);
  EXPECT_LT(max_err(wf, w), 1e-6);
  EXPECT_LT(max_err(lf, lse), 1e-6);
}

TEST(OpsForward, ExpertsMatchNaivePerRowFfn) {
  const int64_t E = 4, d = 32, f = 48;
  const std::vector<int64_t> offset = {0, 120, 120, 250, 300};  // expert 1 empty
  const int64_t R = offset[E];
  const Vec rows = gc::random_vector(R * d, 21), w1 = gc::random_vector(E * d * f, 22, 0.3),
            b1 = gc::random_vector(E * f, 23, 0.2), w2 = gc::random_vector(E * f * d, 24, 0.3),
            b2 = gc::random_vector(E * d, 25, 0.2);
  Vec out(R * d), hp(R * f), h(R * f);
  experts_forward(out.data(), hp.data(), h.data(), rows.data(), w1.data(), b1.data(), w2.data(), b2.data(),
                  offset.data(), E, d, f);
  double err = 0.0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offset[e]; r < offset[e + 1]; ++r) {
      Vec hid(f);
      for (int64_t j = 0; j < f; ++j) {
        double s = b1[e * f + j];
        for (int64_t i = 0; i < d; ++i) s += rows[r * d + i] * w1[(e * d + i) * f + j];
        hid[j] = gelu_ref(s);
        err = std::max({err, std::fabs(hp[r * f + j] - s), std::fabs(h[r * f + j] - hid[j])});
      }
      for (int64_t i = 0; i < d; ++i) {
        double s = b2[e * d + i];
        for (int64_t j = 0; j < f; ++j) s += hid[j] * w2[(e * f + j) * d + i];
        err = std::max(err, std::fabs(out[r * d + i] - s));
      }
    }
  EXPECT_LT(err, 1e-12);
  // float agreement
  auto rf = to_float(rows), w1f = to_float(w1), b1f = to_float(b1), w2f = to_float(w2), b2f = to_float(b2);
  std::vector<float> of(R * d), hpf(R * f), hf(R * f);
  experts_forward(of.data(), hpf.data(), hf.data(), rf.data(), w1f.data(), b1f.data(), w2f.data(), b2f.data(),
                  offset.data(), E, d, f);
  EXPECT_LT(max_err(of, out), 2e-5);
  // float backward agrees with double backward
  const Vec dout = gc::random_vector(R * d, 26);
  Vec dr(R * d, 0.0), dw1(E * d * f, 0.0), db1(E * f, 0.0), dw2(E * f * d, 0.0), db2(E * d, 0.0), scratch(R * f);
  experts_backward<double>(dr.data(), dw1.data(), db1.data(), dw2.data(), db2.data(), scratch.data(), dout.data(),
                           rows.data(), hp.data(), h.data(), w1.data(), w2.data(), offset.data(), E, d, f);
  auto doutf = to_float(dout);
  std::vector<float> drf(R * d, 0.0f), dw1f(E * d * f, 0.0f), db1f(E * f, 0.0f), dw2f(E * f * d, 0.0f),
      db2f(E * d, 0.0f), scratchf(R * f);
  experts_backward<float>(drf.data(), dw1f.data(), db1f.data(), dw2f.data(), db2f.data(), scratchf.data(),
                          doutf.data(), rf.data(), hpf.data(), hf.data(), w1f.data(), w2f.data(), offset.data(), E, d,
                          f);
  EXPECT_LT(max_err(drf, dr), 1e-4);
  EXPECT_LT(max_err(dw1f, dw1), 1e-4);
  EXPECT_LT(max_err(db1f, db1), 1e-4);
  EXPECT_LT(max_err(dw2f, dw2), 1e-4);
  EXPECT_LT(max_err(db2f, db2), 1e-4);
}

}  // namespace
