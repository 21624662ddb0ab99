// Global-batch routing counts, statistics and router losses (see global_routing.h).
#include "model/global_routing.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/moe.h"

namespace smt {

namespace {
bool several(const Communicator* world) { return world != nullptr && world->size() > 1; }
}  // namespace

GlobalRouting global_routing(Communicator* world, const std::vector<int64_t>& num_routed_local, int64_t T, int64_t k,
                             double capacity_factor, bool moe) {
  const int64_t E = static_cast<int64_t>(num_routed_local.size());
  SMT_CHECK(E >= 1 && T >= 0, "global_routing: bad sizes E=", E, " T=", T);
  GlobalRouting g;
  g.num_routed_before.assign(E, 0);
  if (!several(world)) {
    g.num_routed_global = num_routed_local;
    g.num_tokens_global = T;
  } else {
    // Every rank's [assignments per expert (E), tokens]; lower ranks' assignments come first in the
    // global (token, slot) order.
    const int W = world->size(), me = world->rank();
    std::vector<int64_t> mine(num_routed_local), all(static_cast<size_t>(W * (E + 1)));
    mine.push_back(T);
    world->all_gather(mine.data(), all.data(), (E + 1) * static_cast<int64_t>(sizeof(int64_t)));
    g.num_routed_global.assign(E, 0);
    for (int r = 0; r < W; ++r) {
      for (int64_t e = 0; e < E; ++e) {
        g.num_routed_global[e] += all[r * (E + 1) + e];
        if (r < me) g.num_routed_before[e] += all[r * (E + 1) + e];
      }
      g.num_tokens_global += all[r * (E + 1) + E];
    }
  }
  g.capacity = moe ? cpu::expert_capacity(capacity_factor, g.num_tokens_global, E, k) : 0;
  return g;
}

LayerRouting routing_stats(const GlobalRouting& g, bool moe) {
  LayerRouting r;
  r.is_moe = moe;
  r.routed_per_expert = g.num_routed_global;
  r.tokens_per_expert.assign(g.num_routed_global.size(), 0);
  for (size_t e = 0; e < g.num_routed_global.size(); ++e) {
    const int64_t routed = g.num_routed_global[e];
    r.tokens_per_expert[e] = g.capacity > 0 ? std::min(routed, g.capacity) : routed;
    r.dropped += routed - r.tokens_per_expert[e];
  }
  return r;
}

double load_balance_scale(double aux_coeff, int64_t E, int64_t k, int64_t num_tokens_global) {
  const double Tg = static_cast<double>(num_tokens_global);
  return Tg > 0 ? aux_coeff * static_cast<double>(E) / (static_cast<double>(k) * Tg * Tg) : 0.0;
}

RouterLosses router_losses(Communicator* world, std::vector<double> probs_and_z, const GlobalRouting& g, int64_t k,
                           double aux_coeff, double z_coeff) {
  const int64_t E = static_cast<int64_t>(g.num_routed_global.size());
  SMT_CHECK(static_cast<int64_t>(probs_and_z.size()) == E + 1, "router_losses: expected ", E + 1, " sums, got ",
            probs_and_z.size());
  if (several(world)) world->all_reduce_sum(probs_and_z.data(), E + 1);
  RouterLosses out;
  if (g.num_tokens_global == 0) return out;
  double balance = 0;
  for (int64_t e = 0; e < E; ++e) balance += static_cast<double>(g.num_routed_global[e]) * probs_and_z[e];
  out.aux = load_balance_scale(aux_coeff, E, k, g.num_tokens_global) * balance;
  out.z = z_coeff * probs_and_z[E] / static_cast<double>(g.num_tokens_global);
  return out;
}

}  // namespace smt
