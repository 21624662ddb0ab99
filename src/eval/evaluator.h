// Batched inference of a classifier model over a data set: class probabilities per example,
// routing counts summed over the set, and the metrics of src/eval/metrics.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/metrics.h"
#include "model/model.h"

namespace smt {

struct Predictions {
  int num_classes = 0;
  std::vector<float> probs;     // [n, C]
  std::vector<int32_t> labels;  // [n]
  std::vector<int32_t> groups;  // [n]
  std::vector<std::vector<int64_t>> tokens_per_expert;  // [layers][E], summed over the set (all positions, padding included)
  // Per layer, the top-k expert choices of each example's non-PAD tokens: [layers][n * E_l]
  // (E_l = 1 for a dense-FFN layer), and the capacity drops summed over the set.
  std::vector<std::vector<int64_t>> expert_counts;
  std::vector<int> experts_per_layer;  // [layers] E_l
  std::vector<int64_t> dropped;        // [layers]
};

// progress: called with (done, total) after each batch (may be empty).
Predictions predict(Model& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                    const std::function<void(int64_t, int64_t)>& progress = {});

struct EvalSummary {
  ClassificationMetrics overall;
  double majority_accuracy = 0;          // of the evaluated set
  bool has_binary_view = false;          // six-way LIAR: collapsed to false/true
  ClassificationMetrics binary;          // when has_binary_view
  double binary_majority_accuracy = 0;
  std::vector<std::string> group_names;  // per-group accuracy (synthetic families)
  std::vector<double> group_accuracy;
  std::vector<int64_t> group_count;
};

EvalSummary summarize(const Predictions& p, const Dataset& data);
// A readable table for a terminal.
std::string format_summary(const EvalSummary& s, const std::string& title);

}  // namespace smt
