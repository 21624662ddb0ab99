// Tests of the CPU block-sparse attention: forward against the naive reference and a
// brute-force log-sum-exp (every pattern, causal or not, N a multiple of the block or not,
// with and without key padding, empty rows), float against double, backward against central
// finite differences in double, backward modes and thread counts, and a long local run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/rng.h"
#include "core/threads.h"
#include "gradcheck.h"
#include "kernels/attention.h"

namespace smt {
namespace {

using cpu::AttnBackwardMode;
using cpu::AttnTileGemm;

// Every tile GEMM back-end (kAvx512 runs the portable kernel on CPUs without AVX-512).
constexpr AttnTileGemm kBackends[] = {AttnTileGemm::kPortable, AttnTileGemm::kAvx512, AttnTileGemm::kBlas};

// Sets the tile GEMM back-end (and optionally the thread count) for a scope.
struct BackendScope {
  AttnTileGemm saved_gemm = cpu::attention_tile_gemm();
  int saved_threads = num_threads();
  explicit BackendScope(AttnTileGemm g, int threads = 0) {
    cpu::set_attention_tile_gemm(g);
    if (threads > 0) set_num_threads(threads);
  }
  ~BackendScope() {
    cpu::set_attention_tile_gemm(saved_gemm);
    set_num_threads(saved_threads);
  }
};

std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed, 7);
  std::vector<double> v(n);
  for (auto& x : v) {
    x = scale * rng.normal();
    if (std::fabs(x) < 1e-3) x = 1e-3;  // never zero
  }
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

AttnPatternConfig pattern(AttnPatternKind kind, bool causal, int bs) {
  AttnPatternConfig c;
  c.kind = kind;
  c.causal = causal;
  c.block_size = bs;
  c.window = bs + bs / 4;  // not a multiple of the block
  c.num_random_blocks = 1;
  c.stride_blocks = 2;
  c.num_global_blocks = 1;
  c.seed = 17;
  return c;
}

constexpr AttnPatternKind kAllKinds[] = {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                                         AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird};

// Key padding for B rows: row 0 pads the first 3 positions and a run in the middle, row 1 every
// 5th position, row 2 (if any) everything; later rows none.
std::vector<uint8_t> make_padding(int64_t B, int64_t N) {
  std::vector<uint8_t> kv(B * N, 1);
  for (int64_t i = 0; i < N; ++i) {
    if (i < 3 || (i >= N / 2 && i < N / 2 + 6)) kv[0 * N + i] = 0;
    if (B > 1 && i % 5 == 2) kv[1 * N + i] = 0;
    if (B > 2) kv[2 * N + i] = 0;
  }
  return kv;
}

struct Problem {
  int64_t B, N, H, hd;
  std::vector<double> q, k, v;
  std::vector<uint8_t> kv;  // empty = no padding
  double scale;
  const uint8_t* key_valid() const { return kv.empty() ? nullptr : kv.data(); }
};

Problem make_problem(int64_t B, int64_t N, int64_t H, int64_t hd, bool padding, uint64_t seed) {
  Problem p{B, N, H, hd, {}, {}, {}, {}, 1.0 / std::sqrt(static_cast<double>(hd))};
  const size_t n = static_cast<size_t>(B * N * H * hd);
  p.q = randn(n, seed * 3 + 1, 1.5);
  p.k = randn(n, seed * 3 + 2, 1.5);
  p.v = randn(n, seed * 3 + 3);
  if (padding) p.kv = make_padding(B, N);
  return p;
}

// Brute-force log-sum-exp and "row has an allowed key" for one (b, h, i).
double brute_lse(const Problem& p, const BlockMask& m, int64_t b, int64_t h, int64_t i, bool* any) {
  const int64_t ld = p.H * p.hd;
  std::vector<double> s;
  for (int64_t j = 0; j < p.N; ++j) {
    if (!m.allowed(static_cast<int>(i), static_cast<int>(j))) continue;
    if (!p.kv.empty() && !p.kv[b * p.N + j]) continue;
    double dot = 0;
    for (int64_t d = 0; d < p.hd; ++d)
      dot += p.q[(b * p.N + i) * ld + h * p.hd + d] * p.k[(b * p.N + j) * ld + h * p.hd + d];
    s.push_back(p.scale * dot);
  }
  *any = !s.empty();
  if (s.empty()) return -std::numeric_limits<double>::infinity();
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double x : s) sum += std::exp(x - mx);
  return mx + std::log(sum);
}

std::string label(const AttnPatternConfig& c, int64_t N, bool padding) {
  return std::string(cpu::attention_tile_backend()) + " " + attn_pattern_name(c.kind) +
         (c.causal ? " causal" : " bidir") + " N=" + std::to_string(N) + (padding ? " padded" : " unpadded");
}

// ---- Forward ------------------------------------------------------------------------------------

TEST(AttentionForward, MatchesNaiveAndBruteForceLseEveryPattern) {
  const int64_t B = 3, H = 2, hd = 16, bs = 16;
  int empty_rows_seen = 0;
  for (AttnTileGemm backend : kBackends)
    for (AttnPatternKind kind : kAllKinds)
      for (bool causal : {true, false})
        for (int64_t N : {64, 100})
          for (bool padding : {false, true}) {
            BackendScope scope(backend);
            const auto c = pattern(kind, causal, bs);
            const BlockMask m = build_block_mask(c, static_cast<int>(N), 1);
            const Problem p = make_problem(B, N, H, hd, padding, 11);
            const size_t n = p.q.size();
            std::vector<double> out(n, 7.0), ref(n, -7.0), lse(B * H * N, 7.0);
            cpu::attention_forward<double>(out.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m,
                                           B, H, hd, p.scale);
            cpu::attention_forward_naive<double>(ref.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H,
                                                 hd, p.scale);
            double max_ref = 0, max_err = 0;
            for (size_t i = 0; i < n; ++i) {
              max_ref = std::max(max_ref, std::fabs(ref[i]));
              max_err = std::max(max_err, std::fabs(out[i] - ref[i]));
            }
            ASSERT_GT(max_ref, 0.1) << label(c, N, padding);
            EXPECT_LE(max_err, 1e-10 * max_ref) << label(c, N, padding);
            for (int64_t b = 0; b < B; ++b)
              for (int64_t h = 0; h < H; ++h)
                for (int64_t i = 0; i < N; ++i) {
                  bool any = false;
                  const double want = brute_lse(p, m, b, h, i, &any);
                  const double got = lse[(b * H + h) * N + i];
                  const double* o = out.data() + (b * N + i) * H * hd + h * hd;
                  if (!any) {
                    ++empty_rows_seen;
                    EXPECT_TRUE(std::isinf(got) && got < 0) << label(c, N, padding) << " row " << i;
                    for (int64_t d = 0; d < hd; ++d) ASSERT_EQ(o[d], 0.0) << label(c, N, padding) << " row " << i;
                  } else {
                    EXPECT_NEAR(got, want, 1e-10 * std::max(1.0, std::fabs(want))) << label(c, N, padding);
                  }
                }
          }
  // Padding of batch row 2 (all keys) and of row 0 (first 3 keys, causal) produces empty rows.
  EXPECT_GT(empty_rows_seen, 0);
}

TEST(AttentionForward, EmptyRowsFromPaddingAreExactlyZero) {
  // Causal local window 0: each query sees only its own key; padded keys leave their rows empty.
  auto c = pattern(AttnPatternKind::kLocal, true, 8);
  c.window = 0;
  const int64_t B = 2, N = 21, H = 2, hd = 8;
  const BlockMask m = build_block_mask(c, N, 0);
  Problem p = make_problem(B, N, H, hd, false, 5);
  p.kv.assign(B * N, 1);
  for (int64_t i : {0, 4, 9, 20}) p.kv[1 * N + i] = 0;
  std::vector<double> out(p.q.size(), 3.0), lse(B * H * N, 3.0);
  cpu::attention_forward<double>(out.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd,
                                 p.scale);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const double* o = out.data() + (b * N + i) * H * hd + h * hd;
        const double* vv = p.v.data() + (b * N + i) * H * hd + h * hd;
        if (!p.kv[b * N + i]) {
          for (int64_t d = 0; d < hd; ++d) EXPECT_EQ(o[d], 0.0);
          EXPECT_EQ(lse[(b * H + h) * N + i], -std::numeric_limits<double>::infinity());
        } else {
          for (int64_t d = 0; d < hd; ++d) EXPECT_NEAR(o[d], vv[d], 1e-14);  // softmax over one key
        }
      }
  // Backward: rows without keys get no gradient, padded keys get none either.
  std::vector<double> dq(p.q.size(), 0.0), dk(p.q.size(), 0.0), dv(p.q.size(), 0.0);
  const auto dout = randn(p.q.size(), 3);
  cpu::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), p.q.data(),
                                  p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale);
  for (int64_t i : {0, 4, 9, 20})
    for (int64_t c2 = 0; c2 < H * hd; ++c2) {
      EXPECT_EQ(dq[(1 * N + i) * H * hd + c2], 0.0);
      EXPECT_EQ(dk[(1 * N + i) * H * hd + c2], 0.0);
      EXPECT_EQ(dv[(1 * N + i) * H * hd + c2], 0.0);
    }
}

TEST(AttentionForward, FloatMatchesDouble) {
  const int64_t B = 2, H = 2, hd = 32, bs = 16;
  for (AttnTileGemm backend : kBackends)
    for (AttnPatternKind kind : kAllKinds)
      for (bool causal : {true, false}) {
        BackendScope scope(backend);
        const auto c = pattern(kind, causal, bs);
        const int64_t N = 100;
        const BlockMask m = build_block_mask(c, N, 0);
        const Problem p = make_problem(B, N, H, hd, true, 21);
        const size_t n = p.q.size();
        std::vector<double> out(n), lse(B * H * N);
        cpu::attention_forward<double>(out.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B,
                                       H, hd, p.scale);
        const auto qf = cast<float>(p.q), kf = cast<float>(p.k), vf = cast<float>(p.v);
        std::vector<float> outf(n), lsef(B * H * N);
        cpu::attention_forward<float>(outf.data(), lsef.data(), qf.data(), kf.data(), vf.data(), p.key_valid(), m, B, H,
                                      hd, static_cast<float>(p.scale));
        // Inputs rounded to float: compare the float kernel with the double one within 1e-4.
        for (size_t i = 0; i < n; ++i)
          ASSERT_NEAR(outf[i], out[i], 1e-4 * std::max(1.0, std::fabs(out[i]))) << label(c, N, true) << " i " << i;
        for (size_t i = 0; i < lse.size(); ++i) {
          if (std::isinf(lse[i])) {
            EXPECT_TRUE(std::isinf(lsef[i]) && lsef[i] < 0);
          } else {
            ASSERT_NEAR(lsef[i], lse[i], 1e-4 * std::max(1.0, std::fabs(lse[i])));
          }
        }
        // Backward float vs double.
        const auto dout = randn(n, 77);
        std::vector<double> dq(n, 0), dk(n, 0), dv(n, 0);
        cpu::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                                        p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale);
        const auto doutf = cast<float>(dout);
        std::vector<float> dqf(n, 0), dkf(n, 0), dvf(n, 0);
        cpu::attention_backward<float>(dqf.data(), dkf.data(), dvf.data(), doutf.data(), outf.data(), lsef.data(),
                                       qf.data(), kf.data(), vf.data(), p.key_valid(), m, B, H, hd,
                                       static_cast<float>(p.scale));
        for (auto [gf, gd, name] :
             {std::tuple{&dqf, &dq, "dq"}, std::tuple{&dkf, &dk, "dk"}, std::tuple{&dvf, &dv, "dv"}}) {
          double scale = 0;
          for (double x : *gd) scale = std::max(scale, std::fabs(x));
          for (size_t i = 0; i < n; ++i)
            ASSERT_NEAR((*gf)[i], (*gd)[i], 1e-4 * scale) << label(c, N, true) << " " << name << " i " << i;
        }
      }
}

// ---- Backward -----------------------------------------------------------------------------------

// Backward (both modes) against central differences of loss = sum(out * R) in double, on 250
// random elements of each of q, k, v; key padding on (empty rows included).
void check_gradients(AttnPatternKind kind, bool causal, int64_t N, int64_t hd, int bs) {
  const int64_t B = 2, H = 2;
  const double eps = 3e-5;  // balances rounding (~1/eps) and truncation (~eps^2) error
  auto c = pattern(kind, causal, bs);
  c.window = bs + 3;
  const BlockMask m = build_block_mask(c, static_cast<int>(N), 2);
  const Problem p = make_problem(B, N, H, hd, true, 31);
  const size_t n = p.q.size();
  const auto R = randn(n, 41);
  auto loss = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
    std::vector<double> out(n), lse(B * H * N);
    cpu::attention_forward<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), p.key_valid(), m, B, H, hd,
                                   p.scale);
    return gradcheck::dot(out, R);
  };
  std::vector<double> out(n), lse(B * H * N);
  cpu::attention_forward<double>(out.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd,
                                 p.scale);
  Rng pick(5, static_cast<uint64_t>(kind) * 2 + causal);
  std::vector<size_t> picked[3];
  std::vector<double> numeric[3];
  for (int which = 0; which < 3; ++which) {
    std::vector<double> x[3] = {p.q, p.k, p.v};
    for (int s = 0; s < 250; ++s) {
      const size_t idx = pick.below(n);
      const double x0 = x[which][idx];
      x[which][idx] = x0 + eps;
      const double fp = loss(x[0], x[1], x[2]);
      x[which][idx] = x0 - eps;
      const double fm = loss(x[0], x[1], x[2]);
      x[which][idx] = x0;
      picked[which].push_back(idx);
      numeric[which].push_back((fp - fm) / (2 * eps));
    }
  }
  for (AttnBackwardMode mode : {AttnBackwardMode::kFusedPerHead, AttnBackwardMode::kSplit}) {
    std::vector<double> grad[3] = {std::vector<double>(n, 0), std::vector<double>(n, 0), std::vector<double>(n, 0)};
    cpu::attention_backward<double>(grad[0].data(), grad[1].data(), grad[2].data(), R.data(), out.data(), lse.data(),
                                    p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    for (int which = 0; which < 3; ++which) {
      std::vector<double> analytic;
      for (size_t idx : picked[which]) analytic.push_back(grad[which][idx]);
      const auto cmp = gradcheck::compare(analytic, numeric[which]);
      EXPECT_LE(cmp.max_rel_error, 1e-6) << label(c, N, true) << " hd=" << hd << " d"
                                         << "qkv"[which] << " mode " << static_cast<int>(mode) << ": "
                                         << cmp.describe();
      EXPECT_GT(cmp.scale, 1e-3);
    }
  }
}

TEST(AttentionBackward, MatchesFiniteDifferencesEveryPattern) {
  for (AttnTileGemm backend : kBackends) {
    BackendScope scope(backend, 1);  // tiny sizes: one thread keeps the ~1500 forwards per case fast
    for (AttnPatternKind kind : kAllKinds)
      for (bool causal : {true, false}) check_gradients(kind, causal, 37, 8, 8);
  }
}

TEST(AttentionBackward, MatchesFiniteDifferencesWideTiles) {
  // hd = 16 and 16-wide blocks: the double AVX-512 kernel's full column blocks and row tails.
  for (AttnTileGemm backend : kBackends) {
    BackendScope scope(backend, 1);
    for (AttnPatternKind kind : {AttnPatternKind::kLocal, AttnPatternKind::kBigBird})
      for (bool causal : {true, false}) check_gradients(kind, causal, 45, 16, 16);
  }
}

TEST(AttentionBackward, AccumulatesAndHonoursNullOutputs) {
  const int64_t B = 2, N = 40, H = 2, hd = 8;
  const auto c = pattern(AttnPatternKind::kBigBird, true, 8);
  const BlockMask m = build_block_mask(c, N, 0);
  const Problem p = make_problem(B, N, H, hd, true, 3);
  const size_t n = p.q.size();
  std::vector<double> out(n), lse(B * H * N);
  cpu::attention_forward<double>(out.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd,
                                 p.scale);
  const auto dout = randn(n, 8);
  for (AttnBackwardMode mode : {AttnBackwardMode::kFusedPerHead, AttnBackwardMode::kSplit}) {
    std::vector<double> dq(n, 0), dk(n, 0), dv(n, 0);
    cpu::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), p.q.data(),
                                    p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    const auto base = randn(n, 9);
    std::vector<double> dq2 = base, dk2 = base, dv2 = base;
    cpu::attention_backward<double>(dq2.data(), dk2.data(), dv2.data(), dout.data(), out.data(), lse.data(), p.q.data(),
                                    p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_NEAR(dq2[i] - base[i], dq[i], 1e-12);
      EXPECT_NEAR(dk2[i] - base[i], dk[i], 1e-12);
      EXPECT_NEAR(dv2[i] - base[i], dv[i], 1e-12);
    }
    // Only one output requested at a time: same values.
    std::vector<double> only(n, 0);
    cpu::attention_backward<double>(only.data(), nullptr, nullptr, dout.data(), out.data(), lse.data(), p.q.data(),
                                    p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(only[i], dq[i], 1e-13);
    std::fill(only.begin(), only.end(), 0.0);
    cpu::attention_backward<double>(nullptr, only.data(), nullptr, dout.data(), out.data(), lse.data(), p.q.data(),
                                    p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(only[i], dk[i], 1e-13);
    std::fill(only.begin(), only.end(), 0.0);
    cpu::attention_backward<double>(nullptr, nullptr, only.data(), dout.data(), out.data(), lse.data(), p.q.data(),
                                    p.k.data(), p.v.data(), p.key_valid(), m, B, H, hd, p.scale, mode);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(only[i], dv[i], 1e-13);
  }
}

TEST(AttentionBackward, ModesAgreeAndThreadCountDoesNotChangeResults) {
  const int64_t B = 2, N = 150, H = 3, hd = 16;
  const int saved_threads = num_threads();
  for (AttnTileGemm backend : kBackends)
    for (AttnPatternKind kind : kAllKinds) {
      BackendScope scope(backend);
      const auto c = pattern(kind, true, 32);
      const BlockMask m = build_block_mask(c, N, 0);
      const Problem p = make_problem(B, N, H, hd, true, 13);
      const size_t n = p.q.size();
      const auto qf = cast<float>(p.q), kf = cast<float>(p.k), vf = cast<float>(p.v), doutf = cast<float>(randn(n, 4));
      // Results per (threads, mode): out, dq, dk, dv.
      std::vector<std::vector<float>> results[2][2];
      for (int t = 0; t < 2; ++t) {
        set_num_threads(t + 1);
        std::vector<float> out(n), lse(B * H * N);
        cpu::attention_forward<float>(out.data(), lse.data(), qf.data(), kf.data(), vf.data(), p.key_valid(), m, B, H,
                                      hd, static_cast<float>(p.scale));
        int mi = 0;
        for (AttnBackwardMode mode : {AttnBackwardMode::kFusedPerHead, AttnBackwardMode::kSplit}) {
          std::vector<float> dq(n, 0), dk(n, 0), dv(n, 0);
          cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), doutf.data(), out.data(), lse.data(),
                                         qf.data(), kf.data(), vf.data(), p.key_valid(), m, B, H, hd,
                                         static_cast<float>(p.scale), mode);
          results[t][mi++] = {out, dq, dk, dv};
        }
      }
      set_num_threads(saved_threads);
      for (int mi = 0; mi < 2; ++mi)
        for (int r = 0; r < 4; ++r)
          EXPECT_EQ(results[0][mi][r], results[1][mi][r]) << "thread count changed output " << r;
      // The two backward modes run the same tile computations in the same order: equal results,
      // so kAuto (which picks a mode by thread count) does not depend on the thread count either.
      for (int r = 1; r < 4; ++r) EXPECT_EQ(results[0][0][r], results[0][1][r]) << "modes differ in output " << r;
    }
}

// ---- Long sequence ------------------------------------------------------------------------------

TEST(AttentionLarge, LocalAtN4096RunsAndMatchesBruteForceRows) {
  const int64_t B = 1, N = 4096, H = 2, hd = 32;
  AttnPatternConfig c;
  c.kind = AttnPatternKind::kLocal;
  c.causal = true;
  c.block_size = 64;
  c.window = 128;
  const BlockMask m = build_block_mask(c, N, 0);
  const size_t n = static_cast<size_t>(B * N * H * hd);
  const auto qd = randn(n, 1), kd = randn(n, 2), vd = randn(n, 3), doutd = randn(n, 4);
  const auto q = cast<float>(qd), k = cast<float>(kd), v = cast<float>(vd), dout = cast<float>(doutd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(n), lse(B * H * N), dq(n, 0), dk(n, 0), dv(n, 0);
  cpu::attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, m, B, H, hd, scale);
  cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(),
                                 k.data(), v.data(), nullptr, m, B, H, hd, scale);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(dq[i]) && std::isfinite(dk[i]) && std::isfinite(dv[i])) << i;
  }
  // A few rows by brute force over their window keys [i - 128, i].
  const int64_t ld = H * hd;
  for (int64_t i : {0, 1, 127, 128, 2000, 4095})
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> s;
      for (int64_t j = std::max<int64_t>(0, i - 128); j <= i; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += qd[i * ld + h * hd + d] * kd[j * ld + h * hd + d];
        s.push_back(dot * scale);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double o = 0;
        for (size_t t = 0; t < s.size(); ++t)
          o += s[t] / sum * vd[(std::max<int64_t>(0, i - 128) + t) * ld + h * hd + d];
        EXPECT_NEAR(out[i * ld + h * hd + d], o, 1e-4) << "row " << i;
      }
      EXPECT_NEAR(lse[h * N + i], mx + std::log(sum), 1e-4);
    }
}

}  // namespace
}  // namespace smt
