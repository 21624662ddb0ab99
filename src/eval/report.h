// The evaluation report: metric views of one set of predictions (six-way and binary LIAR, the
// synthetic set and each claim family), their JSON form, and the readable tables.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/metrics.h"
#include "eval/resampling.h"
#include "eval/routing_stats.h"

namespace smt {

struct EvalView {
  std::string name;                      // "liar6", "liar2", "synthetic", "factual", ...
  std::vector<std::string> class_names;  // [C]
  std::vector<double> probs;             // [n, C]
  std::vector<int32_t> labels;           // [n]
  ClassificationMetrics metrics;
  bool has_intervals = false;  // set by add_intervals
  MetricIntervals intervals;   // 95% bootstrap intervals
};

enum class EvalSourceKind { kLiar, kSynthetic };

// The views of predictions probs [n, C] on `data` (labels and groups from data.examples):
//  LIAR, six classes: liar6 and liar2 (positive = half-true, mostly-true, true; probabilities summed);
//  LIAR, two classes: liar2 only;
//  synthetic: "synthetic" and one view per non-empty group (claim family, "long_context").
std::vector<EvalView> build_views(const std::vector<double>& probs, int num_classes, const Dataset& data,
                                  EvalSourceKind source);

// Fills each view's 95% bootstrap intervals (settings.level must be 0.95: the JSON calls them ci95).
void add_intervals(std::vector<EvalView>& views, const BootstrapSettings& settings);

// {"n", "accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}}, "confusion",
//  "class_names", "nll", "brier", "ece", "auc" (binary views only),
//  "ci95": {"accuracy": [lo, hi], "macro_f1", "nll", "auc" (binary views; null if undefined)} (with intervals)}
std::string view_json(const EvalView& view);

// JSON of one routing layer (see LayerRoutingStats); undefined values as null.
std::string routing_layer_json(const LayerRoutingStats& s, const LayerRoutingStats* by_group);

struct SystemViews {
  std::string system;  // "model", "majority", "ngram-lr"
  std::vector<EvalView> views;
};
// One table: a block per view with a row per system (n, accuracy, macro-F1, NLL, Brier, ECE, AUC).
std::string format_views_table(const std::vector<SystemViews>& systems);
// The views' 95% intervals (views with intervals only): accuracy, macro-F1, AUC per system.
std::string format_intervals_table(const std::vector<SystemViews>& systems);

// The model minus one baseline on one view (paired: the same examples, the same resamples).
struct ViewComparison {
  std::string view, baseline;
  PairedComparison paired;
};
// Every baseline against the model (systems[0]) on every view both have.
std::vector<ViewComparison> compare_with_baselines(const std::vector<SystemViews>& systems,
                                                   const BootstrapSettings& settings);
// {"accuracy": {"difference", "ci95": [lo, hi], "p"}, "macro_f1", "nll", "auc" (binary views; null if
//  undefined), "mcnemar": {"model_only_correct", "baseline_only_correct", "p"}}
std::string comparison_json(const ViewComparison& c);
std::string format_comparisons_table(const std::vector<ViewComparison>& comparisons);
std::string format_routing_table(const std::vector<LayerRoutingStats>& layers);

}  // namespace smt
