// How the experts were used over an evaluation set, from the per-example expert choices of each
// layer (PAD positions excluded): tokens per expert, the load-balance coefficient, the routing
// entropy and the expert specialisation I(class; expert) / H(expert), with a shuffled-label
// baseline (the value the same counts give when labels carry no information, up to chance).
#pragma once
#include <cstdint>
#include <vector>

namespace smt {

// (mean/max - k/E) / (1 - k/E) of the expert counts: 1 = perfectly even, 0 = as uneven as top-k
// allows (every token in the same k experts). Returns -1 when undefined (E <= k or no tokens).
double load_balance_coefficient(const std::vector<int64_t>& tokens_per_expert, int top_k);

// Entropy in bits of the distribution counts / sum (0 for no counts).
double entropy_bits(const std::vector<int64_t>& counts);

// Specialisation of one layer: counts_per_example [n, E] (assignments of example i's non-PAD
// tokens to each expert), labels [n] in [0, num_classes). Joint counts c(y, e) summed over
// examples give I(Y; E) / H(E) in [0, 1] (0 when H(E) = 0: a single expert used).
double specialisation(const std::vector<int64_t>& counts_per_example, int num_experts,
                      const std::vector<int32_t>& labels, int num_classes);

// A Fisher-Yates permutation of labels drawn from Philox(seed) (the chance baseline).
std::vector<int32_t> shuffled_labels(const std::vector<int32_t>& labels, uint64_t seed);

constexpr uint64_t kShuffleSeed = 20240611;

struct LayerRoutingStats {
  int layer = 0;
  bool is_moe = false;
  int num_experts = 1, top_k = 1;
  std::vector<int64_t> tokens_per_expert;  // [E] routed assignments of non-PAD tokens (before capacity)
  int64_t dropped = 0;                     // capacity drops over the set (PAD positions included)
  double load_balance = -1;
  double entropy = 0;             // bits
  double entropy_normalized = 0;  // entropy / log2(E) (0 for one expert)
  double specialisation = 0;      // against the labels
  double specialisation_shuffled = 0;  // against shuffled_labels(labels, kShuffleSeed)
};

// counts_per_example [n, E] as above.
LayerRoutingStats layer_routing_stats(int layer, bool is_moe, int num_experts, int top_k,
                                      const std::vector<int64_t>& counts_per_example,
                                      const std::vector<int32_t>& labels, int num_classes);

}  // namespace smt
