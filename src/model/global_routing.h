// The parts of an MoE layer that are defined over the global batch, shared by the CPU Model and the
// GpuModel: routing counts and capacity (which of a rank's assignments an expert keeps), the routing
// statistics, and the load-balance and z-losses. Under several ranks every rank holds a contiguous
// shard of the global batch, world rank order being token order; the counts travel over a host
// communicator (small: E + 1 integers per rank). world = nullptr or of size 1: one process.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace smt {

// Routing statistics of the last forward, per layer (dense layers have one "expert"). Under
// several ranks the MoE counts are those of the whole global batch.
struct LayerRouting {
  bool is_moe = false;
  std::vector<int64_t> tokens_per_expert;  // [E] kept assignments
  std::vector<int64_t> routed_per_expert;  // [E] before capacity dropping
  int64_t dropped = 0;
};

struct GlobalRouting {
  std::vector<int64_t> num_routed_global;  // [E] assignments per expert over the global batch, before dropping
  std::vector<int64_t> num_routed_before;  // [E] assignments of lower world ranks (they come first)
  int64_t num_tokens_global = 0;
  int64_t capacity = 0;  // per expert over the global batch; 0 = unlimited (dense layers, capacity_factor 0)
};

// From this rank's per-expert assignment counts [E] and tokens T: all-gathers every rank's counts
// (collective when world has several ranks). moe = false: capacity 0.
GlobalRouting global_routing(Communicator* world, const std::vector<int64_t>& num_routed_local, int64_t T, int64_t k,
                             double capacity_factor, bool moe);

// The layer's routing statistics: an expert keeps the first `capacity` of its global assignments.
LayerRouting routing_stats(const GlobalRouting& g, bool moe);

// d(aux)/d(probs[t, e]) = load_balance_scale * num_routed_global[e] (Switch loss, Megatron normalisation).
double load_balance_scale(double aux_coeff, int64_t E, int64_t k, int64_t num_tokens_global);

struct RouterLosses {
  double aux = 0, z = 0;
};
// probs_and_z [E + 1]: this rank's router probabilities summed over its tokens per expert, then its
// sum of lse^2. Sums them over the world (collective when several ranks) and returns the layer's
// load-balance loss and z-loss over the global batch.
RouterLosses router_losses(Communicator* world, std::vector<double> probs_and_z, const GlobalRouting& g, int64_t k,
                           double aux_coeff, double z_coeff);

}  // namespace smt
