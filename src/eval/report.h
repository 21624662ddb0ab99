// The evaluation report: metric views of one set of predictions (six-way and binary LIAR, the
// synthetic set and each claim family), their JSON form, and the readable tables.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/metrics.h"
#include "eval/routing_stats.h"

namespace smt {

struct EvalView {
  std::string name;                      // "liar6", "liar2", "synthetic", "factual", ...
  std::vector<std::string> class_names;  // [C]
  std::vector<double> probs;             // [n, C]
  std::vector<int32_t> labels;           // [n]
  ClassificationMetrics metrics;
};

enum class EvalSourceKind { kLiar, kSynthetic };

// The views of predictions probs [n, C] on `data` (labels and groups from data.examples):
//  LIAR, six classes: liar6 and liar2 (positive = half-true, mostly-true, true; probabilities summed);
//  LIAR, two classes: liar2 only;
//  synthetic: "synthetic" and one view per non-empty group (claim family, "long_context").
std::vector<EvalView> build_views(const std::vector<double>& probs, int num_classes, const Dataset& data,
                                  EvalSourceKind source);

// {"n", "accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}}, "confusion",
//  "class_names", "nll", "brier", "ece", "auc" (binary views only)}
std::string view_json(const EvalView& view);

// JSON of one routing layer (see LayerRoutingStats); undefined values as null.
std::string routing_layer_json(const LayerRoutingStats& s, const LayerRoutingStats* by_group);

struct SystemViews {
  std::string system;  // "model", "majority", "ngram-lr"
  std::vector<EvalView> views;
};
// One table: a block per view with a row per system (n, accuracy, macro-F1, NLL, Brier, ECE, AUC).
std::string format_views_table(const std::vector<SystemViews>& systems);
std::string format_routing_table(const std::vector<LayerRoutingStats>& layers);

}  // namespace smt
