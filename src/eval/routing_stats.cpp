// Routing statistics over an evaluation set (see routing_stats.h).
#include "eval/routing_stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace smt {

double load_balance_coefficient(const std::vector<int64_t>& tokens_per_expert, int top_k) {
  const auto E = static_cast<double>(tokens_per_expert.size());
  if (E <= top_k) return -1;
  int64_t total = 0, max_count = 0;
  for (int64_t c : tokens_per_expert) {
    SMT_CHECK(c >= 0, "load_balance_coefficient: negative count ", c);
    total += c;
    max_count = std::max(max_count, c);
  }
  if (max_count == 0) return -1;
  const double ratio = static_cast<double>(total) / E / static_cast<double>(max_count);
  const double floor_ratio = top_k / E;
  return (ratio - floor_ratio) / (1.0 - floor_ratio);
}

double entropy_bits(const std::vector<int64_t>& counts) {
  double total = 0;
  for (int64_t c : counts) total += static_cast<double>(c);
  if (total <= 0) return 0;
  double h = 0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = static_cast<double>(c) / total;
      h -= p * std::log2(p);
    }
  return h;
}

double specialisation(const std::vector<int64_t>& counts_per_example, int num_experts,
                      const std::vector<int32_t>& labels, int num_classes) {
  SMT_CHECK(num_experts > 0 && num_classes > 0, "specialisation: need experts and classes");
  const auto E = static_cast<size_t>(num_experts), C = static_cast<size_t>(num_classes);
  SMT_CHECK(counts_per_example.size() == labels.size() * E, "specialisation: ", counts_per_example.size(),
            " counts for ", labels.size(), " examples x ", E, " experts");
  std::vector<double> joint(C * E, 0.0), p_class(C, 0.0), p_expert(E, 0.0);
  double total = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const int32_t y = labels[i];
    SMT_CHECK(y >= 0 && y < num_classes, "specialisation: label ", y, " outside [0, ", num_classes, ")");
    for (size_t e = 0; e < E; ++e) {
      const auto c = static_cast<double>(counts_per_example[i * E + e]);
      joint[static_cast<size_t>(y) * E + e] += c;
      p_class[static_cast<size_t>(y)] += c;
      p_expert[e] += c;
      total += c;
    }
  }
  if (total <= 0) return 0;
  double h_expert = 0, mutual = 0;
  for (size_t e = 0; e < E; ++e)
    if (p_expert[e] > 0) h_expert -= p_expert[e] / total * std::log2(p_expert[e] / total);
  if (h_expert <= 0) return 0;
  for (size_t y = 0; y < C; ++y)
    for (size_t e = 0; e < E; ++e) {
      const double j = joint[y * E + e];
      if (j > 0) mutual += j / total * std::log2(j * total / (p_class[y] * p_expert[e]));
    }
  return std::clamp(mutual / h_expert, 0.0, 1.0);
}

std::vector<int32_t> shuffled_labels(const std::vector<int32_t>& labels, uint64_t seed) {
  std::vector<int32_t> out = labels;
  Rng rng(seed, 0);
  for (size_t i = out.size(); i > 1; --i) std::swap(out[i - 1], out[rng.below(i)]);
  return out;
}

LayerRoutingStats layer_routing_stats(int layer, bool is_moe, int num_experts, int top_k,
                                      const std::vector<int64_t>& counts_per_example,
                                      const std::vector<int32_t>& labels, int num_classes) {
  LayerRoutingStats s;
  s.layer = layer;
  s.is_moe = is_moe;
  s.num_experts = num_experts;
  s.top_k = top_k;
  const auto E = static_cast<size_t>(num_experts);
  SMT_CHECK(counts_per_example.size() == labels.size() * E, "routing stats: ", counts_per_example.size(),
            " counts for ", labels.size(), " examples x ", E, " experts");
  s.tokens_per_expert.assign(E, 0);
  for (size_t i = 0; i < counts_per_example.size(); ++i) s.tokens_per_expert[i % E] += counts_per_example[i];
  s.load_balance = load_balance_coefficient(s.tokens_per_expert, top_k);
  s.entropy = entropy_bits(s.tokens_per_expert);
  s.entropy_normalized = E > 1 ? s.entropy / std::log2(static_cast<double>(E)) : 0.0;
  s.specialisation = specialisation(counts_per_example, num_experts, labels, num_classes);
  s.specialisation_shuffled =
      specialisation(counts_per_example, num_experts, shuffled_labels(labels, kShuffleSeed), num_classes);
  return s;
}

}  // namespace smt
