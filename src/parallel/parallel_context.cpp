// Group construction for expert and data parallelism (see parallel_context.h).
#include "parallel/parallel_context.h"

#include <algorithm>

#include "core/error.h"

namespace smt {

std::pair<int64_t, int64_t> ParallelContext::batch_shard(int64_t global_batch) const {
  const int64_t W = world_size(), r = world_rank();
  return {global_batch * r / W, global_batch * (r + 1) / W};
}

std::string ParallelContext::describe() const {
  const int W = world_size();
  return std::to_string(W) + (W == 1 ? " rank" : " ranks") + ", expert parallel " + std::to_string(expert_parallel) +
         " (" + std::to_string(num_local_experts()) + " of " + std::to_string(num_experts) + " experts per rank), " +
         std::to_string(W / expert_parallel) + (W / expert_parallel == 1 ? " replica" : " replicas");
}

ParallelContext make_parallel_context(std::unique_ptr<Communicator> world, int expert_parallel, int num_experts,
                                      int64_t global_batch) {
  const int W = world->size();
  SMT_USAGE_CHECK(num_experts >= 1, "model.experts must be positive");
  const int P = expert_parallel > 0 ? expert_parallel : std::min(W, num_experts);
  SMT_USAGE_CHECK(W % P == 0, "parallel.expert_parallel = ", P, " does not divide the number of ranks (", W,
                  "); choose P dividing both the ranks and model.experts = ", num_experts);
  SMT_USAGE_CHECK(num_experts % P == 0, "parallel.expert_parallel = ", P, " does not divide model.experts = ",
                  num_experts, (expert_parallel > 0 ? "" : " (P = min(ranks, experts) by default)"),
                  "; run on a number of ranks that divides or is a multiple of the experts, or set parallel.expert_parallel");
  SMT_USAGE_CHECK(global_batch >= W, "train.batch_size = ", global_batch, " rows cannot feed ", W,
                  " ranks (each rank needs at least one row of the global batch)");
  ParallelContext ctx;
  ctx.expert_parallel = P;
  ctx.num_experts = num_experts;
  const int r = world->rank();
  // Expert group = P consecutive ranks; expert-data group = same position in every expert group.
  ctx.expert_group = world->split(/*color=*/r / P, /*key=*/r);
  ctx.expert_data_group = world->split(/*color=*/r % P, /*key=*/r);
  ctx.world = std::move(world);
  return ctx;
}

}  // namespace smt
