// How sure the evaluation numbers are: percentile bootstrap intervals over the evaluated examples
// (Efron & Tibshirani 1993, ch. 13), and paired comparisons of two systems scored on the same
// examples: the paired bootstrap (Koehn 2004; Berg-Kirkpatrick et al. 2012) and McNemar's exact test
// on the examples exactly one of the two classifies correctly (McNemar 1947).
//
// A resample draws n example indices uniformly with replacement: resample b uses the Philox stream b
// under the key `seed`, so the same seed gives the same resamples on every machine. Its metrics follow
// from each example's prediction weighted by how often the example was drawn (O(n + C^2) per resample,
// after one sort of the scores per system), so no resample copies the data; with every weight 1 they
// are compute_classification_metrics' numbers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace smt {

struct Interval {
  double lo = 0, hi = 0;
};

struct BootstrapSettings {
  int resamples = 1000;  // B
  uint64_t seed = 1;
  double level = 0.95;  // central interval between the quantiles (1 - level)/2 and (1 + level)/2
};

// Accuracy, macro-F1, NLL and (two classes) ROC AUC of one system's predictions on one set, for
// example weights: weights[i] >= 0 counts how often example i is in the sample. The definitions are
// metrics.h's (argmax ties to the lowest index, F1 0 where undefined, NLL clamped at 1e-12, AUC with
// mid-ranks for ties); a weight k gives exactly what k copies of the example give there.
class WeightedScorer {
 public:
  // probs [n, C] row-major, labels [n] in [0, C).
  WeightedScorer(const std::vector<double>& probs, const std::vector<int32_t>& labels, int num_classes);

  struct Metrics {
    double accuracy = 0, macro_f1 = 0, nll = 0;
    double auc = -1;  // -1: not two classes, or one class absent from the sample
  };
  Metrics score(const std::vector<int32_t>& weights) const;  // weights [n], sum > 0
  Metrics score_all() const;                                  // every weight 1

  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  const std::vector<uint8_t>& correct() const { return correct_; }  // [n] argmax == label
  const std::vector<int32_t>& labels() const { return labels_; }    // [n]

 private:
  int num_classes_;
  std::vector<int32_t> labels_, pred_;  // [n]
  std::vector<uint8_t> correct_;        // [n]
  std::vector<double> nll_;             // [n] -log(max(p[label], 1e-12))
  std::vector<double> score_;           // [n] p(class 1), two classes only
  std::vector<std::size_t> order_;          // [n] examples by ascending score_, two classes only
};

// Resample b's weights: n draws of an example index in [0, n), weights[i] = times i was drawn.
void bootstrap_weights(int64_t n, uint64_t seed, int64_t b, std::vector<int32_t>& weights);

// The q-quantile (q in [0, 1]) of non-empty values, interpolating linearly between order statistics
// (numpy.quantile's default method, Hyndman & Fan type 7).
double quantile(std::vector<double> values, double q);

struct MetricIntervals {
  Interval accuracy, macro_f1, nll, auc;
  bool has_auc = false;  // two classes, and AUC defined in at least half of the resamples (over those)
};
MetricIntervals bootstrap_intervals(const WeightedScorer& system, const BootstrapSettings& settings);

// One metric of system A minus the same metric of system B on the same examples.
struct Difference {
  double value = 0;  // on the evaluated examples
  Interval ci;       // percentile interval of the resampled differences
  double p = 1;      // two-sided, centred: (1 + #{b : |d_b - value| >= |value|}) / (B + 1), ties counted
};
struct PairedComparison {
  Difference accuracy, macro_f1, nll, auc;
  bool has_auc = false;                        // as in MetricIntervals, for both systems
  int64_t only_a_correct = 0, only_b_correct = 0;  // the discordant examples
  double mcnemar_p = 1;
};
// a and b must score the same examples (same labels).
PairedComparison compare_paired(const WeightedScorer& a, const WeightedScorer& b, const BootstrapSettings& settings);

// McNemar's exact test: the two-sided binomial p-value of min(b, c) in b + c trials at 1/2,
// min(1, 2 P[X <= min(b, c)]); 1 when b + c = 0; never below the smallest normal double.
double mcnemar_exact_p(int64_t b, int64_t c);

}  // namespace smt
