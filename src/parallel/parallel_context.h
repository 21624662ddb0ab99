// How the W ranks of a job share the work (DESIGN.md "Parallelism"): expert-parallel groups of
// P consecutive world ranks, each rank holding E/P experts; W/P expert-data-parallel replicas
// (the ranks holding the same experts). Every rank trains on its own contiguous shard of the
// global batch; for the same seed and global batch the losses do not depend on W or P.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "parallel/communicator.h"

namespace smt {

struct ParallelContext {
  std::unique_ptr<Communicator> world;              // all W ranks
  std::unique_ptr<Communicator> expert_group;       // P ranks that together hold all E experts
  std::unique_ptr<Communicator> expert_data_group;  // W/P ranks that hold the same E/P experts
  int expert_parallel = 1;                          // P
  int num_experts = 1;                              // E (of the MoE layers)

  int world_size() const { return world->size(); }
  int world_rank() const { return world->rank(); }
  bool distributed() const { return world->size() > 1; }
  int num_local_experts() const { return num_experts / expert_parallel; }
  int first_local_expert() const { return expert_group->rank() * num_local_experts(); }
  // Rows [first, second) of a global batch of B rows that this rank trains on (as even as possible;
  // rank r's rows precede rank r+1's, so world rank order is the global token order).
  std::pair<int64_t, int64_t> batch_shard(int64_t global_batch) const;
  std::string describe() const;  // "4 ranks, expert parallel 4 (2 experts per rank), 1 replica"
};

// Splits `world` into the groups. expert_parallel = 0 means min(W, E). Throws UsageError when P
// does not divide W or E, or when the global batch has fewer rows than there are ranks.
ParallelContext make_parallel_context(std::unique_ptr<Communicator> world, int expert_parallel, int num_experts,
                                      int64_t global_batch);

}  // namespace smt
