// MoE routing: router top-k properties (k distinct experts, descending, weights sum to 1, ties to
// the lower index), expert capacity, the routing plan (row grouping, (token, slot) order, exact
// capacity drops), and the permute -> identity -> unpermute round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "gradcheck.h"
#include "kernels/moe.h"

namespace {

using namespace smt::cpu;
namespace gc = smt::gradcheck;

struct Routed {
  std::vector<float> probs, weight, lse;
  std::vector<int32_t> idx;
};

Routed route(const std::vector<float>& logits, int64_t T, int64_t E, int64_t k) {
  Routed r;
  r.probs.resize(T * E);
  r.weight.resize(T * k);
  r.lse.resize(T);
  r.idx.resize(T * k);
  router_topk_forward(r.probs.data(), r.idx.data(), r.weight.data(), r.lse.data(), logits.data(), T, E, k);
  return r;
}

std::vector<float> random_logits(int64_t n, uint64_t seed, double scale = 3.0) {
  const auto v = gc::random_vector(n, seed, scale, 1e-3);
  return std::vector<float>(v.begin(), v.end());
}

TEST(RoutingTopk, ExactlyKDistinctLargestExpertsDescendingWithUnitWeights) {
  const int64_t T = 200, E = 8;
  for (int64_t k : {1, 2, 3, 8}) {
    const auto logits = random_logits(T * E, 100 + k);
    const Routed r = route(logits, T, E, k);
    for (int64_t t = 0; t < T; ++t) {
      std::set<int32_t> seen;
      double wsum = 0.0, psum = 0.0;
      float min_selected = 2.0f;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = r.idx[t * k + j];
        ASSERT_GE(e, 0);
        ASSERT_LT(e, E);
        seen.insert(e);
        wsum += r.weight[t * k + j];
        min_selected = std::min(min_selected, r.probs[t * E + e]);
        if (j > 0) {
          EXPECT_GE(r.probs[t * E + r.idx[t * k + j - 1]], r.probs[t * E + e]) << "t=" << t << " j=" << j;
          EXPECT_GE(r.weight[t * k + j - 1], r.weight[t * k + j]);
        }
      }
      EXPECT_EQ(int64_t(seen.size()), k) << "duplicate expert for token " << t;
      EXPECT_NEAR(wsum, 1.0, 1e-6);
      for (int64_t e = 0; e < E; ++e) {
        psum += r.probs[t * E + e];
        if (!seen.count(int32_t(e))) {
          EXPECT_LE(r.probs[t * E + e], min_selected) << "a larger expert was skipped";
        }
      }
      EXPECT_NEAR(psum, 1.0, 1e-6);
    }
  }
}

TEST(RoutingTopk, TiesGoToTheLowerExpertIndex) {
  const int64_t E = 5;
  // row 0: all equal; row 1: three-way tie for the top among 1, 2, 4; row 2: tie for second place (3 and 4).
  const std::vector<float> logits = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f,  //
                                     1.0f, 3.0f, 3.0f, 0.0f, 3.0f,  //
                                     9.0f, 1.0f, 2.0f, 4.0f, 4.0f};
  const Routed r2 = route(logits, 3, E, 2);
  EXPECT_EQ(r2.idx, (std::vector<int32_t>{0, 1, 1, 2, 0, 3}));
  EXPECT_EQ(r2.weight[0], 0.5f);
  EXPECT_EQ(r2.weight[1], 0.5f);
  EXPECT_EQ(r2.weight[2], r2.weight[3]);
  const Routed r3 = route(logits, 3, E, 3);
  EXPECT_EQ(r3.idx, (std::vector<int32_t>{0, 1, 2, 1, 2, 4, 0, 3, 4}));
  // double instantiation ties the same way
  const std::vector<double> ld(logits.begin(), logits.end());
  std::vector<double> p(3 * E), w(3 * 3), lse(3);
  std::vector<int32_t> idx(3 * 3);
  router_topk_forward(p.data(), idx.data(), w.data(), lse.data(), ld.data(), 3, E, 3);
  EXPECT_EQ(idx, r3.idx);
}

TEST(RoutingTopk, RejectsKLargerThanE) {
  const auto logits = random_logits(2 * 3, 7);
  std::vector<float> p(6), w(8), lse(2);
  std::vector<int32_t> idx(8);
  EXPECT_THROW(router_topk_forward(p.data(), idx.data(), w.data(), lse.data(), logits.data(), 2, 3, 4), smt::Error);
}

TEST(RoutingCapacity, IsCeilOfCTkOverE) {
  EXPECT_EQ(expert_capacity(1.0, 4096, 8, 2), 1024);
  EXPECT_EQ(expert_capacity(1.25, 100, 8, 2), 32);  // 31.25 -> 32
  EXPECT_EQ(expert_capacity(2.0, 7, 3, 1), 5);      // 14/3 = 4.67 -> 5
  EXPECT_EQ(expert_capacity(1.5, 10, 5, 2), 6);     // exactly 6
  EXPECT_EQ(expert_capacity(0.01, 10, 8, 2), 1);    // 0.025 -> 1: a positive factor never means dropless
  EXPECT_EQ(expert_capacity(0.0, 4096, 8, 2), 0);   // dropless
  EXPECT_THROW(expert_capacity(-1.0, 10, 8, 2), smt::Error);
}

// T = 10, k = 2, E = 4: every token routes to expert 0 (slot alternating), the other slot to 1, 2 or 3
// (4, 3, 3 assignments). Capacity 4: expert 0 keeps tokens 0..3 and drops the 6 later ones.
std::vector<int32_t> ten_to_expert_zero() {
  std::vector<int32_t> idx;
  const int32_t other[10] = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1};
  for (int t = 0; t < 10; ++t) {
    if (t % 2 == 0) {
      idx.push_back(0);
      idx.push_back(other[t]);
    } else {
      idx.push_back(other[t]);
      idx.push_back(0);
    }
  }
  return idx;
}

TEST(RoutingPlan, CapacityDropsExactlyTheLaterAssignments) {
  const int64_t T = 10, E = 4, k = 2;
  const auto idx = ten_to_expert_zero();
  const RoutingPlan plan = build_routing_plan(idx.data(), T, E, k, 4);
  EXPECT_EQ(plan.num_routed_per_expert, (std::vector<int64_t>{10, 4, 3, 3}));
  EXPECT_EQ(plan.num_tokens_per_expert, (std::vector<int64_t>{4, 4, 3, 3}));
  EXPECT_EQ(plan.expert_row_offset, (std::vector<int64_t>{0, 4, 8, 11, 14}));
  EXPECT_EQ(plan.num_dropped(), 6);
  EXPECT_EQ(plan.num_rows(), 14);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot0 = t % 2 == 0 ? 0 : 1;  // where expert 0 sits for token t
    const int64_t a0 = t * k + slot0, a_other = t * k + (1 - slot0);
    if (t < 4) {
      EXPECT_EQ(plan.row_of_assignment[a0], t) << "token " << t << " keeps its expert-0 row, in token order";
      EXPECT_EQ(plan.assignment_of_row[t], a0);
      EXPECT_EQ(plan.token_of_row[t], t);
    } else {
      EXPECT_EQ(plan.row_of_assignment[a0], -1) << "token " << t << " must be dropped from expert 0";
    }
    EXPECT_GE(plan.row_of_assignment[a_other], 4) << "other experts are under capacity";
  }
  // Expert 1 gets tokens 0, 3, 6, 9 in that order.
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(plan.token_of_row[4 + i], 3 * i);
}

TEST(RoutingPlan, DroplessKeepsEverything) {
  const int64_t T = 10, E = 4, k = 2;
  const auto idx = ten_to_expert_zero();
  const RoutingPlan plan = build_routing_plan(idx.data(), T, E, k, 0);
  EXPECT_EQ(plan.num_dropped(), 0);
  EXPECT_EQ(plan.num_rows(), T * k);
  EXPECT_EQ(plan.num_tokens_per_expert, plan.num_routed_per_expert);
  for (int64_t a = 0; a < T * k; ++a) EXPECT_GE(plan.row_of_assignment[a], 0);
}

TEST(RoutingPlan, EveryKeptAssignmentAppearsInExactlyOneRowOfItsExpert) {
  const int64_t T = 300, E = 8, k = 2;
  const auto logits = random_logits(T * E, 55);
  const Routed r = route(logits, T, E, k);
  for (double c : {0.0, 1.0, 0.6}) {
    const int64_t cap = expert_capacity(c, T, E, k);
    const RoutingPlan plan = build_routing_plan(r.idx.data(), T, E, k, cap);
    SCOPED_TRACE(::testing::Message() << "capacity " << cap);
    std::vector<int64_t> routed(E, 0);
    for (int32_t e : r.idx) ++routed[e];
    EXPECT_EQ(plan.num_routed_per_expert, routed);
    int64_t expected_dropped = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t kept = cap > 0 ? std::min(routed[e], cap) : routed[e];
      expected_dropped += routed[e] - kept;
      EXPECT_EQ(plan.num_tokens_per_expert[e], kept);
      EXPECT_EQ(plan.expert_row_offset[e + 1] - plan.expert_row_offset[e], kept);
    }
    EXPECT_EQ(plan.num_dropped(), expected_dropped);
    if (c == 0.6) {
      EXPECT_GT(expected_dropped, 0);
    }
    std::vector<int> hits(plan.num_rows(), 0);
    for (int64_t a = 0; a < T * k; ++a) {
      const int64_t row = plan.row_of_assignment[a];
      if (row < 0) continue;
      ASSERT_LT(row, plan.num_rows());
      ++hits[row];
      const int32_t e = r.idx[a];
      EXPECT_GE(row, plan.expert_row_offset[e]);
      EXPECT_LT(row, plan.expert_row_offset[e + 1]);
      EXPECT_EQ(plan.assignment_of_row[row], a);
      EXPECT_EQ(plan.token_of_row[row], a / k);
    }
    for (int h : hits) EXPECT_EQ(h, 1);
    // Within an expert, rows follow (token, slot) order, and a dropped assignment comes after every kept one.
    for (int64_t e = 0; e < E; ++e) {
      int64_t last_kept = -1;
      for (int64_t row = plan.expert_row_offset[e]; row < plan.expert_row_offset[e + 1]; ++row) {
        if (row > plan.expert_row_offset[e]) {
          EXPECT_LT(plan.assignment_of_row[row - 1], plan.assignment_of_row[row]);
        }
        last_kept = plan.assignment_of_row[row];
      }
      for (int64_t a = 0; a < T * k; ++a) {
        if (r.idx[a] == e && plan.row_of_assignment[a] < 0) {
          EXPECT_GT(a, last_kept);
        }
      }
    }
  }
}

TEST(RoutingPlan, RejectsOutOfRangeExpertIndex) {
  const std::vector<int32_t> too_big = {0, 4, 1, 2};
  EXPECT_THROW(build_routing_plan(too_big.data(), 2, 4, 2, 0), smt::Error);
  const std::vector<int32_t> negative = {0, 1, -1, 2};
  EXPECT_THROW(build_routing_plan(negative.data(), 2, 4, 2, 0), smt::Error);
}

TEST(RoutingPlan, AllTokensToOneExpertWorks) {
  const int64_t T = 20, E = 4, k = 1, d = 3, f = 5;
  std::vector<float> logits(T * E, 0.0f);
  for (int64_t t = 0; t < T; ++t) logits[t * E + 2] = 5.0f;
  const Routed r = route(logits, T, E, k);
  for (int32_t e : r.idx) EXPECT_EQ(e, 2);
  const RoutingPlan dropless = build_routing_plan(r.idx.data(), T, E, k, 0);
  EXPECT_EQ(dropless.expert_row_offset, (std::vector<int64_t>{0, 0, 0, 20, 20}));
  const RoutingPlan plan = build_routing_plan(r.idx.data(), T, E, k, expert_capacity(1.0, T, E, k));
  EXPECT_EQ(plan.capacity, 5);
  EXPECT_EQ(plan.num_dropped(), 15);
  EXPECT_EQ(plan.num_rows(), 5);
  // Run the whole layer: experts 0, 1, 3 have no rows; dropped tokens get only the residual.
  const auto xd = gc::random_vector(T * d, 56);
  const std::vector<float> x(xd.begin(), xd.end());
  const auto w1d = gc::random_vector(E * d * f, 57), w2d = gc::random_vector(E * f * d, 58);
  const std::vector<float> w1(w1d.begin(), w1d.end()), w2(w2d.begin(), w2d.end()), b1(E * f, 0.1f),
      b2(E * d, 0.2f);
  const int64_t R = plan.num_rows();
  std::vector<float> rows(R * d), hp(R * f), h(R * f), out(R * d), y = x;
  permute_forward(rows.data(), x.data(), plan, d);
  experts_forward(out.data(), hp.data(), h.data(), rows.data(), w1.data(), b1.data(), w2.data(), b2.data(),
                  plan.expert_row_offset.data(), E, d, f);
  unpermute_forward(y.data(), out.data(), r.weight.data(), plan, d);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < d; ++j) {
      if (t < 5)
        EXPECT_FLOAT_EQ(y[t * d + j], x[t * d + j] + out[t * d + j]);  // row t holds token t, weight 1
      else
        EXPECT_EQ(y[t * d + j], x[t * d + j]);
    }
}

TEST(RoutingPlan, PermuteIdentityUnpermuteReturnsTheInputExactly) {
  const int64_t T = 64, E = 6, k = 2, d = 8;
  const auto logits = random_logits(T * E, 59);
  const Routed r = route(logits, T, E, k);
  const RoutingPlan plan = build_routing_plan(r.idx.data(), T, E, k, 0);
  // Dyadic inputs and weights: every product and sum is exact, so the round trip must be bit-exact.
  std::mt19937 gen(60);
  std::vector<float> x(T * d), w(T * k);
  for (auto& v : x) v = float(int(gen() % 257) - 128) / 16.0f;
  const float pairs[4][2] = {{0.5f, 0.5f}, {0.75f, 0.25f}, {0.875f, 0.125f}, {0.625f, 0.375f}};
  for (int64_t t = 0; t < T; ++t) {
    w[t * k] = pairs[t % 4][0];
    w[t * k + 1] = pairs[t % 4][1];
  }
  std::vector<float> rows(plan.num_rows() * d, -1.0f), y(T * d, 0.0f);
  permute_forward(rows.data(), x.data(), plan, d);
  unpermute_forward(y.data(), rows.data(), w.data(), plan, d);  // identity experts: rows_out = rows
  EXPECT_EQ(y, x);
  // With the router's own weights (sum to 1 up to rounding) the round trip is exact to float rounding.
  std::vector<float> y2(T * d, 0.0f);
  unpermute_forward(y2.data(), rows.data(), r.weight.data(), plan, d);
  for (int64_t i = 0; i < T * d; ++i) EXPECT_NEAR(y2[i], x[i], 4e-7f * std::max(1.0f, std::fabs(x[i])));
  // And the adjoint: permute_backward of ones counts each token's kept assignments (k here).
  std::vector<float> ones(plan.num_rows() * d, 1.0f), cnt(T * d, 0.0f);
  permute_backward(cnt.data(), ones.data(), plan, d);
  for (float c : cnt) EXPECT_EQ(c, float(k));
}

}  // namespace
