// Every CPU op's backward against central finite differences in double precision.
// Loss = sum(out * R) with random R; inputs random and bounded away from zero. Gradient buffers start
// with random values, so the check also verifies that backward ACCUMULATES (analytic = after - before).
// Tolerance: max relative error 1e-6 (see gradcheck::compare) unless a test states otherwise.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "gradcheck.h"
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

constexpr double kTol = 1e-6;

void expect_close_grad(const Vec& analytic, const Vec& numeric, const char* what, double tol = kTol) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  const gc::Comparison c = gc::compare(analytic, numeric);
  EXPECT_LE(c.max_rel_error, tol) << what << ": " << c.describe();
  EXPECT_GT(c.scale, 1e-8) << what << ": gradient is identically zero, the check would be vacuous";
}

// Runs backward into a buffer pre-filled with random values and returns (after - before).
template <typename Fn>
Vec accumulated(size_t n, uint64_t seed, Fn&& backward_into) {
  const Vec before = gc::random_vector(n, seed, 3.0);
  Vec buf = before;
  backward_into(buf.data());
  return gc::difference(buf, before);
}

TEST(OpsGradcheck, Linear) {
  const int64_t M = 5, n_in = 4, n_out = 3;
  Vec x = gc::random_vector(M * n_in, 1), w = gc::random_vector(n_in * n_out, 2), b = gc::random_vector(n_out, 3);
  const Vec R = gc::random_vector(M * n_out, 4);
  auto loss = [&](const Vec& xv, const Vec& wv, const Vec& bv) {
    Vec y(M * n_out);
    linear_forward(y.data(), xv.data(), wv.data(), bv.data(), M, n_in, n_out);
    return gc::dot(y, R);
  };
  const Vec dx = accumulated(x.size(), 10, [&](double* g) {
    linear_backward<double>(g, nullptr, nullptr, R.data(), x.data(), w.data(), M, n_in, n_out);
  });
  const Vec dw = accumulated(w.size(), 11, [&](double* g) {
    linear_backward<double>(nullptr, g, nullptr, R.data(), x.data(), w.data(), M, n_in, n_out);
  });
  const Vec db = accumulated(b.size(), 12, [&](double* g) {
    linear_backward<double>(nullptr, nullptr, g, R.data(), x.data(), w.data(), M, n_in, n_out);
  });
  expect_close_grad(dx, gc::numerical_gradient([&](const Vec& v) { return loss(v, w, b); }, x), "linear dx");
  expect_close_grad(dw, gc::numerical_gradient([&](const Vec& v) { return loss(x, v, b); }, w), "linear dw");
  expect_close_grad(db, gc::numerical_gradient([&](const Vec& v) { return loss(x, w, v); }, b), "linear db");
}

TEST(OpsGradcheck, LinearAllOutputsAtOnceMatchSeparateCalls) {
  const int64_t M = 7, n_in = 3, n_out = 5;
  const Vec x = gc::random_vector(M * n_in, 21), w = gc::random_vector(n_in * n_out, 22);
  const Vec R = gc::random_vector(M * n_out, 23);
  Vec dx1(x.size(), 0.0), dw1(w.size(), 0.0), db1(n_out, 0.0);
  linear_backward<double>(dx1.data(), dw1.data(), db1.data(), R.data(), x.data(), w.data(), M, n_in, n_out);
  Vec dx2(x.size(), 0.0), dw2(w.size(), 0.0), db2(n_out, 0.0);
  linear_backward<double>(dx2.data(), nullptr, nullptr, R.data(), x.data(), w.data(), M, n_in, n_out);
  linear_backward<double>(nullptr, dw2.data(), nullptr, R.data(), x.data(), w.data(), M, n_in, n_out);
  linear_backward<double>(nullptr, nullptr, db2.data(), R.data(), x.data(), w.data(), M, n_in, n_out);
  for (size_t i = 0; i < dx1.size(); ++i) EXPECT_DOUBLE_EQ(dx1[i], dx2[i]);
  for (size_t i = 0; i < dw1.size(); ++i) EXPECT_DOUBLE_EQ(dw1[i], dw2[i]);
  for (size_t i = 0; i < db1.size(); ++i) EXPECT_DOUBLE_EQ(db1[i], db2[i]);
}

TEST(OpsGradcheck, BackwardCalledTwiceDoublesTheGradient) {
  const int64_t M = 6, n_in = 4, n_out = 3;
  const Vec x = gc::random_vector(M * n_in, 31), w = gc::random_vector(n_in * n_out, 32);
  const Vec R = gc::random_vector(M * n_out, 33);
  Vec dx1(x.size(), 0.0), dw1(w.size(), 0.0), db1(n_out, 0.0);
  linear_backward<double>(dx1.data(), dw1.data(), db1.data(), R.data(), x.data(), w.data(), M, n_in, n_out);
  Vec dx2(x.size(), 0.0), dw2(w.size(), 0.0), db2(n_out, 0.0);
  for (int rep = 0; rep < 2; ++rep)
    linear_backward<double>(dx2.data(), dw2.data(), db2.data(), R.data(), x.data(), w.data(), M, n_in, n_out);
  for (size_t i = 0; i < dx1.size(); ++i) EXPECT_NEAR(dx2[i], 2 * dx1[i], 1e-14);
  for (size_t i = 0; i < dw1.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw1[i], 1e-14);
  for (size_t i = 0; i < db1.size(); ++i) EXPECT_NEAR(db2[i], 2 * db1[i], 1e-14);

  // The same for rmsnorm (row and column reductions) and the router (per-row chains).
  const int64_t T = 3, d = 5;
  const Vec xr = gc::random_vector(T * d, 34), wr = gc::random_vector(d, 35), Rr = gc::random_vector(T * d, 36);
  Vec out(T * d), rstd(T);
  rmsnorm_forward(out.data(), rstd.data(), xr.data(), wr.data(), T, d, 1e-6);
  Vec gx1(T * d, 0.0), gw1(d, 0.0), gx2(T * d, 0.0), gw2(d, 0.0);
  rmsnorm_backward<double>(gx1.data(), gw1.data(), Rr.data(), xr.data(), wr.data(), rstd.data(), T, d);
  for (int rep = 0; rep < 2; ++rep)
    rmsnorm_backward<double>(gx2.data(), gw2.data(), Rr.data(), xr.data(), wr.data(), rstd.data(), T, d);
  for (size_t i = 0; i < gx1.size(); ++i) EXPECT_NEAR(gx2[i], 2 * gx1[i], 1e-14);
  for (size_t i = 0; i < gw1.size(); ++i) EXPECT_NEAR(gw2[i], 2 * gw1[i], 1e-14);
}

TEST(OpsGradcheck, MatmulTransposed) {
  const int64_t M = 4, k = 5, n = 3;
  Vec x = gc::random_vector(M * k, 41), w = gc::random_vector(n * k, 42);
  const Vec R = gc::random_vector(M * n, 43);
  auto loss = [&](const Vec& xv, const Vec& wv) {
    Vec y(M * n);
    matmul_transposed_forward(y.data(), xv.data(), wv.data(), M, k, n);
    return gc::dot(y, R);
  };
  const Vec dx = accumulated(x.size(), 44, [&](double* g) {
    matmul_transposed_backward<double>(g, nullptr, R.data(), x.data(), w.data(), M, k, n);
  });
  const Vec dw = accumulated(w.size(), 45, [&](double* g) {
    matmul_transposed_backward<double>(nullptr, g, R.data(), x.data(), w.data(), M, k, n);
  });
  expect_close_grad(dx, gc::numerical_gradient([&](const Vec& v) { return loss(v, w); }, x), "matmul_t dx");
  expect_close_grad(dw, gc::numerical_gradient([&](const Vec& v) { return loss(x, v); }, w), "matmul_t dw");
}

TEST(OpsGradcheck, Embedding) {
  const int64_t V = 6, T = 9, d = 4;
  const std::vector<int32_t> tokens = {3, 0, 5, 3, 3, 1, 0, 2, 5};  // repeats; token 4 unused
  Vec table = gc::random_vector(V * d, 51);
  const Vec R = gc::random_vector(T * d, 52);
  auto loss = [&](const Vec& tv) {
    Vec out(T * d);
    embedding_forward(out.data(), tokens.data(), tv.data(), T, d);
    return gc::dot(out, R);
  };
  const Vec dt = accumulated(table.size(), 53,
                             [&](double* g) { embedding_backward(g, R.data(), tokens.data(), T, d); });
  expect_close_grad(dt, gc::numerical_gradient(loss, table), "embedding dtable");
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(dt[4 * d + j], 0.0) << "unused row must get no gradient";
}

TEST(OpsGradcheck, RmsNorm) {
  const int64_t T = 4, d = 7;
  Vec x = gc::random_vector(T * d, 61, 2.0), w = gc::random_vector(d, 62, 1.5);
  const Vec R = gc::random_vector(T * d, 63);
  auto loss = [&](const Vec& xv, const Vec& wv) {
    Vec out(T * d), rstd(T);
    rmsnorm_forward(out.data(), rstd.data(), xv.data(), wv.data(), T, d, 1e-6);
    return gc::dot(out, R);
  };
  Vec out(T * d), rstd(T);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, d, 1e-6);
  const Vec dx = accumulated(x.size(), 64, [&](double* g) {
    rmsnorm_backward<double>(g, nullptr, R.data(), x.data(), w.data(), rstd.data(), T, d);
  });
  const Vec dw = accumulated(w.size(), 65, [&](double* g) {
    rmsnorm_backward<double>(nullptr, g, R.data(), x.data(), w.data(), rstd.data(), T, d);
  });
  expect_close_grad(dx, gc::numerical_gradient([&](const Vec& v) { return loss(v, w); }, x), "rmsnorm dx");
  expect_close_grad(dw, gc::numerical_gradient([&](const Vec& v) { return loss(x, v); }, w), "rmsnorm dweight");
}

TEST(OpsGradcheck, Rope) {
  const int64_t B = 2, N = 5, H = 2, hd = 6;
  for (double theta : {10000.0, 10.0}) {
    Vec x = gc::random_vector(B * N * H * hd, 71);
    const Vec R = gc::random_vector(x.size(), 72);
    auto loss = [&](const Vec& xv) {
      Vec out(xv.size());
      rope_forward(out.data(), xv.data(), B, N, H, hd, theta);
      return gc::dot(out, R);
    };
    const Vec dx = accumulated(x.size(), 73, [&](double* g) { rope_backward(g, R.data(), B, N, H, hd, theta); });
    expect_close_grad(dx, gc::numerical_gradient(loss, x), theta > 100 ? "rope dx theta 1e4" : "rope dx theta 10");
  }
}

TEST(OpsGradcheck, Gelu) {
  const int64_t n = 60;
  Vec x = gc::random_vector(n, 81, 4.0, 0.01);
  x[0] = 9.0;  // tails
  x[1] = -9.0;
  const Vec R = gc::random_vector(n, 82);
  auto loss = [&](const Vec& xv) {
    Vec out(n);
    gelu_forward(out.data(), xv.data(), n);
    return gc::dot(out, R);
  };
  const Vec dx = accumulated(n, 83, [&](double* g) { gelu_backward(g, R.data(), x.data(), n); });
  expect_close_grad(dx, gc::numerical_gradient(loss, x), "gelu dx");
  // In-place variant: d = gelu'(x) * d.
  Vec d = R;
  gelu_backward_inplace(d.data(), x.data(), n);
  Vec ref(n, 0.0);
  gelu_backward(ref.data(), R.data(), x.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(d[i], ref[i]);
}

TEST(OpsGradcheck, CrossEntropy) {
  const int64_t M = 6, C = 5;
  const std::vector<int32_t> targets = {2, -1, 0, 4, 4, 1};
  Vec logits = gc::random_vector(M * C, 91, 3.0);
  const double scale = 0.37;
  auto loss = [&](const Vec& z) {
    Vec probs(M * C);
    return scale * cross_entropy_forward(probs.data(), z.data(), targets.data(), M, C, nullptr);
  };
  Vec probs(M * C);
  cross_entropy_forward(probs.data(), logits.data(), targets.data(), M, C, nullptr);
  const Vec dz = accumulated(logits.size(), 92,
                             [&](double* g) { cross_entropy_backward(g, probs.data(), targets.data(), M, C, scale); });
  expect_close_grad(dz, gc::numerical_gradient(loss, logits), "cross_entropy dlogits");
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dz[1 * C + c], 0.0) << "ignored row must get no gradient";
}

TEST(OpsGradcheck, MeanPool) {
  const int64_t B = 3, N = 4, d = 3;
  const std::vector<uint8_t> valid = {1, 1, 0, 1, /**/ 0, 0, 0, 0, /**/ 0, 1, 0, 0};
  Vec x = gc::random_vector(B * N * d, 101);
  const Vec R = gc::random_vector(B * d, 102);
  auto loss = [&](const Vec& xv) {
    Vec out(B * d);
    mean_pool_forward(out.data(), xv.data(), valid.data(), B, N, d);
    return gc::dot(out, R);
  };
  const Vec dx = accumulated(x.size(), 103, [&](double* g) { mean_pool_backward(g, R.data(), valid.data(), B, N, d); });
  expect_close_grad(dx, gc::numerical_gradient(loss, x), "mean_pool dx");
}

// Router: loss = sum(Rw * topk_weight) + sum(Rp * probs) + sum(Rl * lse), each path on or off.
void router_gradcheck(int64_t T, int64_t E, int64_t k, bool use_w, bool use_p, bool use_l, uint64_t seed) {
  Vec logits = gc::random_vector(T * E, seed, 2.5);
  const Vec Rw = gc::random_vector(T * k, seed + 1), Rp = gc::random_vector(T * E, seed + 2),
            Rl = gc::random_vector(T, seed + 3);
  auto loss = [&](const Vec& z) {
    Vec probs(T * E), w(T * k), lse(T);
    std::vector<int32_t> idx(T * k);
    router_topk_forward(probs.data(), idx.data(), w.data(), lse.data(), z.data(), T, E, k);
    double s = 0.0;
    if (use_w) s += gc::dot(w, Rw);
    if (use_p) s += gc::dot(probs, Rp);
    if (use_l) s += gc::dot(lse, Rl);
    return s;
  };
  Vec probs(T * E), w(T * k), lse(T);
  std::vector<int32_t> idx(T * k);
  router_topk_forward(probs.data(), idx.data(), w.data(), lse.data(), logits.data(), T, E, k);
  const Vec dz = accumulated(logits.size(), seed + 4, [&](double* g) {
    router_topk_backward<double>(g, use_w ? Rw.data() : nullptr, use_p ? Rp.data() : nullptr,
                                 use_l ? Rl.data() : nullptr, probs.data(), idx.data(), w.data(), T, E, k);
  });
  SCOPED_TRACE(::testing::Message() << "k=" << k << " weight=" << use_w << " probs=" << use_p << " lse=" << use_l);
  expect_close_grad(dz, gc::numerical_gradient(loss, logits), "router dlogits");
}

TEST(OpsGradcheck, RouterTopkWeightPath) {
  router_gradcheck(6, 5, 2, true, false, false, 110);
  router_gradcheck(6, 5, 3, true, false, false, 120);
}

TEST(OpsGradcheck, RouterTopOneWeightIsConstant) {
  // k = 1: the renormalised weight is identically 1, so its path must contribute exactly nothing.
  const int64_t T = 4, E = 6, k = 1;
  const Vec logits = gc::random_vector(T * E, 126, 2.0), Rw = gc::random_vector(T * k, 127);
  Vec probs(T * E), w(T * k), lse(T), dz(T * E, 0.0);
  std::vector<int32_t> idx(T * k);
  router_topk_forward(probs.data(), idx.data(), w.data(), lse.data(), logits.data(), T, E, k);
  router_topk_backward<double>(dz.data(), Rw.data(), nullptr, nullptr, probs.data(), idx.data(), w.data(), T, E, k);
  for (int64_t t = 0; t < T; ++t) EXPECT_DOUBLE_EQ(w[t], 1.0);
  for (double g : dz) EXPECT_NEAR(g, 0.0, 1e-15);
}

TEST(OpsGradcheck, RouterProbsAndLsePaths) {
  router_gradcheck(6, 5, 2, false, true, false, 130);
  router_gradcheck(6, 5, 2, false, false, true, 140);
  router_gradcheck(7, 8, 2, true, true, true, 150);
}

// A plan with drops: T=6, E=3, k=2, capacity 3.
std::vector<int32_t> routing_with_drops() { return {0, 1, /**/ 0, 2, /**/ 1, 0, /**/ 0, 2, /**/ 2, 1, /**/ 1, 0}; }

TEST(OpsGradcheck, PermuteAndUnpermute) {
  const int64_t T = 6, E = 3, k = 2, d = 4;
  const std::vector<int32_t> idx = routing_with_drops();
  const RoutingPlan plan = build_routing_plan(idx.data(), T, E, k, 3);
  ASSERT_GT(plan.num_dropped(), 0);
  const int64_t R = plan.num_rows();
  // permute: rows = P x
  Vec x = gc::random_vector(T * d, 161);
  const Vec Rrows = gc::random_vector(R * d, 162);
  auto loss_p = [&](const Vec& xv) {
    Vec rows(R * d);
    permute_forward(rows.data(), xv.data(), plan, d);
    return gc::dot(rows, Rrows);
  };
  const Vec dx = accumulated(x.size(), 163, [&](double* g) { permute_backward(g, Rrows.data(), plan, d); });
  expect_close_grad(dx, gc::numerical_gradient(loss_p, x), "permute dx");
  // unpermute: y = y0 + sum_j w rows_out[row]
  Vec rows_out = gc::random_vector(R * d, 164), w = gc::random_vector(T * k, 165);
  const Vec y0 = gc::random_vector(T * d, 166), Ry = gc::random_vector(T * d, 167);
  auto loss_u = [&](const Vec& rv, const Vec& wv) {
    Vec y = y0;
    unpermute_forward(y.data(), rv.data(), wv.data(), plan, d);
    return gc::dot(y, Ry);
  };
  const Vec drows = accumulated(rows_out.size(), 168, [&](double* g) {
    unpermute_backward<double>(g, nullptr, Ry.data(), rows_out.data(), w.data(), plan, d);
  });
  const Vec dw = accumulated(w.size(), 169, [&](double* g) {
    unpermute_backward<double>(nullptr, g, Ry.data(), rows_out.data(), w.data(), plan, d);
  });
  expect_close_grad(drows, gc::numerical_gradient([&](const Vec& v) { return loss_u(v, w); }, rows_out),
                    "unpermute drows_out");
  const Vec num_dw = gc::numerical_gradient([&](const Vec& v) { return loss_u(rows_out, v); }, w);
  expect_close_grad(dw, num_dw, "unpermute dtopk_weight");
  for (int64_t a = 0; a < T * k; ++a) {
    if (plan.row_of_assignment[a] < 0) {
      EXPECT_EQ(dw[a], 0.0) << "dropped assignment " << a;
    }
  }
}

TEST(OpsGradcheck, Experts) {
  const int64_t E = 3, d = 4, f = 5;
  const std::vector<int64_t> offset = {0, 3, 3, 7};  // expert 1 has no rows
  const int64_t R = offset[E];
  Vec rows = gc::random_vector(R * d, 171, 1.5), w1 = gc::random_vector(E * d * f, 172),
      b1 = gc::random_vector(E * f, 173, 0.5), w2 = gc::random_vector(E * f * d, 174),
      b2 = gc::random_vector(E * d, 175, 0.5);
  const Vec Rout = gc::random_vector(R * d, 176);
  auto loss = [&](const Vec& rv, const Vec& w1v, const Vec& b1v, const Vec& w2v, const Vec& b2v) {
    Vec out(R * d), hp(R * f), h(R * f);
    experts_forward(out.data(), hp.data(), h.data(), rv.data(), w1v.data(), b1v.data(), w2v.data(), b2v.data(),
                    offset.data(), E, d, f);
    return gc::dot(out, Rout);
  };
  Vec out(R * d), hp(R * f), h(R * f), scratch(R * f);
  experts_forward(out.data(), hp.data(), h.data(), rows.data(), w1.data(), b1.data(), w2.data(), b2.data(),
                  offset.data(), E, d, f);
  auto bwd = [&](double* dr, double* dw1, double* db1, double* dw2, double* db2) {
    experts_backward<double>(dr, dw1, db1, dw2, db2, scratch.data(), Rout.data(), rows.data(), hp.data(), h.data(),
                             w1.data(), w2.data(), offset.data(), E, d, f);
  };
  const Vec g_rows = accumulated(rows.size(), 177, [&](double* g) { bwd(g, nullptr, nullptr, nullptr, nullptr); });
  const Vec g_w1 = accumulated(w1.size(), 178, [&](double* g) { bwd(nullptr, g, nullptr, nullptr, nullptr); });
  const Vec g_b1 = accumulated(b1.size(), 179, [&](double* g) { bwd(nullptr, nullptr, g, nullptr, nullptr); });
  const Vec g_w2 = accumulated(w2.size(), 180, [&](double* g) { bwd(nullptr, nullptr, nullptr, g, nullptr); });
  const Vec g_b2 = accumulated(b2.size(), 181, [&](double* g) { bwd(nullptr, nullptr, nullptr, nullptr, g); });
  expect_close_grad(g_rows, gc::numerical_gradient([&](const Vec& v) { return loss(v, w1, b1, w2, b2); }, rows),
                    "experts drows");
  expect_close_grad(g_w1, gc::numerical_gradient([&](const Vec& v) { return loss(rows, v, b1, w2, b2); }, w1),
                    "experts dw1");
  expect_close_grad(g_b1, gc::numerical_gradient([&](const Vec& v) { return loss(rows, w1, v, w2, b2); }, b1),
                    "experts db1");
  expect_close_grad(g_w2, gc::numerical_gradient([&](const Vec& v) { return loss(rows, w1, b1, v, b2); }, w2),
                    "experts dw2");
  expect_close_grad(g_b2, gc::numerical_gradient([&](const Vec& v) { return loss(rows, w1, b1, w2, v); }, b2),
                    "experts db2");
  // The empty expert's parameters get nothing.
  for (int64_t i = 0; i < d * f; ++i) EXPECT_EQ(g_w1[1 * d * f + i], 0.0);
  for (int64_t i = 0; i < f; ++i) EXPECT_EQ(g_b1[1 * f + i], 0.0);
}

// The chain router -> plan -> permute -> experts -> unpermute, with capacity drops, differentiated
// end to end with respect to the tokens and the router weights (the plan is piecewise constant).
TEST(OpsGradcheck, MoeLayerChain) {
  const int64_t T = 7, d = 4, E = 3, k = 2, f = 6, capacity = 4;
  Vec x = gc::random_vector(T * d, 191, 1.5), wr = gc::random_vector(d * E, 192, 1.5);
  const Vec w1 = gc::random_vector(E * d * f, 193), b1 = gc::random_vector(E * f, 194),
            w2 = gc::random_vector(E * f * d, 195), b2 = gc::random_vector(E * d, 196);
  const Vec Ry = gc::random_vector(T * d, 197), Rl = gc::random_vector(T, 198);
  struct State {
    Vec logits, probs, tw, lse, rows, hp, h, out, y;
    std::vector<int32_t> idx;
    RoutingPlan plan;
  };
  auto forward = [&](const Vec& xv, const Vec& wrv, State& s) {
    s.logits.assign(T * E, 0.0);
    linear_forward(s.logits.data(), xv.data(), wrv.data(), nullptr, T, d, E);
    s.probs.assign(T * E, 0.0);
    s.tw.assign(T * k, 0.0);
    s.lse.assign(T, 0.0);
    s.idx.assign(T * k, 0);
    router_topk_forward(s.probs.data(), s.idx.data(), s.tw.data(), s.lse.data(), s.logits.data(), T, E, k);
    s.plan = build_routing_plan(s.idx.data(), T, E, k, capacity);
    const int64_t R = s.plan.num_rows();
    s.rows.assign(R * d, 0.0);
    s.hp.assign(R * f, 0.0);
    s.h.assign(R * f, 0.0);
    s.out.assign(R * d, 0.0);
    permute_forward(s.rows.data(), xv.data(), s.plan, d);
    experts_forward(s.out.data(), s.hp.data(), s.h.data(), s.rows.data(), w1.data(), b1.data(), w2.data(),
                    b2.data(), s.plan.expert_row_offset.data(), E, d, f);
    s.y = xv;  // residual
    unpermute_forward(s.y.data(), s.out.data(), s.tw.data(), s.plan, d);
    return gc::dot(s.y, Ry) + gc::dot(s.lse, Rl);
  };
  State s;
  forward(x, wr, s);
  ASSERT_GT(s.plan.num_dropped(), 0) << "the test wants capacity drops";
  const int64_t R = s.plan.num_rows();
  Vec dx = Ry, dwr(d * E, 0.0), dout(R * d, 0.0), dtw(T * k, 0.0), drows(R * d, 0.0), scratch(R * f),
      dlogits(T * E, 0.0);
  unpermute_backward<double>(dout.data(), dtw.data(), Ry.data(), s.out.data(), s.tw.data(), s.plan, d);
  experts_backward<double>(drows.data(), nullptr, nullptr, nullptr, nullptr, scratch.data(), dout.data(),
                           s.rows.data(), s.hp.data(), s.h.data(), w1.data(), w2.data(),
                           s.plan.expert_row_offset.data(), E, d, f);
  permute_backward(dx.data(), drows.data(), s.plan, d);
  router_topk_backward<double>(dlogits.data(), dtw.data(), nullptr, Rl.data(), s.probs.data(), s.idx.data(),
                               s.tw.data(), T, E, k);
  linear_backward<double>(dx.data(), dwr.data(), nullptr, dlogits.data(), x.data(), wr.data(), T, d, E);
  State tmp;
  expect_close_grad(dx, gc::numerical_gradient([&](const Vec& v) { return forward(v, wr, tmp); }, x), "moe dx");
  expect_close_grad(dwr, gc::numerical_gradient([&](const Vec& v) { return forward(x, v, tmp); }, wr),
                    "moe drouter");
}

}  // namespace
