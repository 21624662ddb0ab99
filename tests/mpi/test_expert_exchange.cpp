// Expert dispatch/combine across ranks (run under mpirun -np 2 and -np 4): rows reach the rank
// that owns their expert, in global (rank, token, slot) order, and come back unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/moe.h"
#include "parallel/expert_exchange.h"
#include "parallel/parallel_context.h"

namespace {

using smt::Communicator;

constexpr int64_t kE = 8, kD = 5;

struct Routed {
  std::vector<int32_t> topk_idx;  // [T,k]
  std::vector<float> topk_w;      // [T,k] summing to 1 per token
  smt::cpu::RoutingPlan plan;
  std::vector<float> x;           // [T,d] tag: rank, token, then noise
  std::vector<float> rows;        // [R,d] plan order
};

Routed make_routed(int rank, int64_t T, int64_t k, uint64_t seed, bool all_to_expert0) {
  Routed r;
  smt::Rng rng(seed, 1000 + rank);
  r.topk_idx.resize(T * k);
  r.topk_w.resize(T * k);
  for (int64_t t = 0; t < T; ++t) {
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      int32_t e = all_to_expert0 ? 0 : static_cast<int32_t>(rng.below(kE));
      if (!all_to_expert0)
        for (int64_t i = 0; i < j; ++i)
          if (r.topk_idx[t * k + i] == e) e = (e + 1) % kE, i = -1;  // distinct experts per token
      r.topk_idx[t * k + j] = e;
      r.topk_w[t * k + j] = 0.1f + static_cast<float>(rng.uniform());
      sum += r.topk_w[t * k + j];
    }
    for (int64_t j = 0; j < k; ++j) r.topk_w[t * k + j] /= sum;
  }
  r.plan = smt::cpu::build_routing_plan(r.topk_idx.data(), T, kE, k, 0);
  r.x.resize(T * kD);
  for (int64_t t = 0; t < T; ++t) {
    r.x[t * kD + 0] = static_cast<float>(rank);
    r.x[t * kD + 1] = static_cast<float>(t);
    for (int64_t c = 2; c < kD; ++c) r.x[t * kD + c] = static_cast<float>(rng.normal());
  }
  r.rows.resize(r.plan.num_rows() * kD);
  smt::cpu::permute_forward<float>(r.rows.data(), r.x.data(), r.plan, kD);
  return r;
}

class ExpertExchangeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = smt::make_parallel_context(smt::make_world_communicator(), 0, kE, 64);
  }
  smt::ParallelContext ctx_;
};

TEST_F(ExpertExchangeTest, IdentityExpertsReturnEveryTokenUnchanged) {
  for (bool to_one : {false, true}) {
    const int64_t T = 37 + 5 * ctx_.world_rank(), k = to_one ? 1 : 2;  // ragged token counts per rank
    Routed r = make_routed(ctx_.world_rank(), T, k, 7, to_one);
    smt::ExpertExchange ex(*ctx_.expert_group, r.plan.num_tokens_per_expert);
    std::vector<float> expert_rows(ex.num_expert_rows() * kD), back(r.rows.size(), -1.0f);
    ex.to_experts(r.rows.data(), expert_rows.data(), kD);
    ex.from_experts(expert_rows.data(), back.data(), kD);  // identity experts
    EXPECT_EQ(back, r.rows) << "rows changed on the way to the experts and back (all to one expert: " << to_one << ")";
    std::vector<float> y(T * kD, 0.0f);
    smt::cpu::unpermute_forward<float>(y.data(), back.data(), r.topk_w.data(), r.plan, kD);
    for (int64_t i = 0; i < T * kD; ++i) ASSERT_NEAR(y[i], r.x[i], 1e-5f * (1 + std::fabs(r.x[i]))) << "element " << i;
  }
}

// The GPU path gathers the counts over a host communicator and moves the rows over another one (NCCL
// or staged MPI): the same members, so the same result; a row group in another rank order is refused.
TEST_F(ExpertExchangeTest, RowsMoveOverASecondCommunicatorOfTheSameRanks) {
  const int me = ctx_.expert_group->rank(), P = ctx_.expert_group->size();
  const int64_t T = 41 + 2 * ctx_.world_rank(), k = 2;
  Routed r = make_routed(ctx_.world_rank(), T, k, 13, false);
  std::unique_ptr<Communicator> rows_group = ctx_.expert_group->split(/*color=*/0, /*key=*/me);
  smt::ExpertExchange one(*ctx_.expert_group, r.plan.num_tokens_per_expert);
  smt::ExpertExchange two(*ctx_.expert_group, *rows_group, r.plan.num_tokens_per_expert);
  EXPECT_EQ(two.num_expert_rows(), one.num_expert_rows());  // not ASSERT: every rank must reach the collectives
  EXPECT_EQ(two.local_expert_row_offset(), one.local_expert_row_offset());
  std::vector<float> via_one(one.num_expert_rows() * kD), via_two(two.num_expert_rows() * kD, -1.0f);
  one.to_experts(r.rows.data(), via_one.data(), kD);
  two.to_experts(r.rows.data(), via_two.data(), kD);
  EXPECT_EQ(via_two, via_one);
  std::vector<float> back(r.rows.size(), -1.0f);
  two.from_experts(via_two.data(), back.data(), kD);
  EXPECT_EQ(back, r.rows);
  if (P > 1) {
    std::unique_ptr<Communicator> reversed = ctx_.expert_group->split(/*color=*/0, /*key=*/P - 1 - me);
    const bool same_rank = reversed->rank() == me;  // the middle rank of an odd group keeps its place
    if (!same_rank)
      EXPECT_THROW(smt::ExpertExchange(*ctx_.expert_group, *reversed, r.plan.num_tokens_per_expert), smt::Error);
    reversed->barrier();
  }
}

TEST_F(ExpertExchangeTest, RowsArriveAtTheirExpertsOwnerInGlobalOrder) {
  const int P = ctx_.expert_group->size(), me = ctx_.expert_group->rank();
  const int64_t T = 29 + 3 * ctx_.world_rank(), k = 2, El = ctx_.num_local_experts(), e0 = ctx_.first_local_expert();
  Routed r = make_routed(ctx_.world_rank(), T, k, 11, false);
  smt::ExpertExchange ex(*ctx_.expert_group, r.plan.num_tokens_per_expert);
  std::vector<float> expert_rows(ex.num_expert_rows() * kD);
  ex.to_experts(r.rows.data(), expert_rows.data(), kD);
  // What every member routed where: recompute each member's plan from its seed.
  const int group_first_world_rank = ctx_.world_rank() - me;
  int64_t expected_rows = 0;
  const auto& off = ex.local_expert_row_offset();
  for (int64_t e = 0; e < El; ++e) {
    int64_t pos = off[e];
    for (int s = 0; s < P; ++s) {
      const int src_world = group_first_world_rank + s;
      const int64_t Ts = 29 + 3 * src_world;
      Routed src = make_routed(src_world, Ts, k, 11, false);
      for (int64_t row = src.plan.expert_row_offset[e0 + e]; row < src.plan.expert_row_offset[e0 + e + 1]; ++row) {
        const int64_t t = src.plan.token_of_row[row];
        ASSERT_LT(pos, off[e + 1]);
        EXPECT_EQ(expert_rows[pos * kD + 0], static_cast<float>(src_world)) << "expert " << e0 + e << " row " << pos;
        EXPECT_EQ(expert_rows[pos * kD + 1], static_cast<float>(t)) << "expert " << e0 + e << " row " << pos;
        ++pos;
        ++expected_rows;
      }
    }
    EXPECT_EQ(pos, off[e + 1]) << "local expert " << e << " received extra rows";
  }
  EXPECT_EQ(ex.num_expert_rows(), expected_rows);
  // Rows that stay on this rank are neither sent nor received over the network.
  int64_t local_rows = 0;
  for (int64_t e = e0; e < e0 + El; ++e) local_rows += r.plan.num_tokens_per_expert[e];
  EXPECT_EQ(ex.rows_sent_to_others(), r.plan.num_rows() - local_rows);
}

TEST_F(ExpertExchangeTest, CapacityIsCountedOverAllRanksInRankOrder) {
  // Every rank routes every token to expert 3; capacity 10 over the whole job: only rank 0's
  // first 10 assignments survive (rank order = global token order).
  const int W = ctx_.world_size(), me = ctx_.world_rank();
  const int64_t T = 8, k = 1, capacity = 10;
  std::vector<int32_t> idx(T * k, 3);
  std::vector<int64_t> before(kE, 0);
  before[3] = me * T;
  const auto plan = smt::cpu::build_routing_plan(idx.data(), T, kE, k, capacity, before.data());
  const int64_t expect_kept = std::max<int64_t>(0, std::min<int64_t>(T, capacity - me * T));
  EXPECT_EQ(plan.num_tokens_per_expert[3], expect_kept) << "rank " << me << " of " << W;
  for (int64_t t = 0; t < T; ++t) EXPECT_EQ(plan.row_of_assignment[t] >= 0, t < expect_kept) << "token " << t;
}

}  // namespace
