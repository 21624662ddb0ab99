// Classification metrics over predicted class probabilities, as a fact-checking paper reports
// them: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix (rows = true label),
// NLL, Brier score, ECE (equal-width bins on top-class confidence) and, for two classes,
// ROC AUC with mid-ranks for ties (equal to scikit-learn's roc_auc_score).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace smt {

struct ClassMetrics {
  double precision = 0, recall = 0, f1 = 0;  // 0 when undefined (no predictions / no support)
  int64_t support = 0;
};

struct ClassificationMetrics {
  int64_t n = 0;
  int num_classes = 0;
  double accuracy = 0, macro_f1 = 0, nll = 0, brier = 0, ece = 0;
  double auc = -1;                            // binary only (positive class 1); -1 = not defined
  std::vector<ClassMetrics> per_class;        // [C]
  std::vector<std::vector<int64_t>> confusion;  // [C][C], rows = true label, cols = predicted
};

// probs [n, C] row-major (rows sum to 1), labels [n]. Prediction = argmax (ties: lowest index).
// nll = mean -log(max(p[label], 1e-12)); brier = mean sum_c (p_c - onehot_c)^2;
// ece = sum_b (n_b/n)|acc_b - conf_b| over num_bins equal-width bins of top-class confidence, bins
// right-closed as in scikit-learn's calibration_curve (and Guo et al. 2017): bin 0 = [0, e_1],
// bin i = (e_i, e_{i+1}] with e_i = i * (1/B) (numpy.linspace's edges).
ClassificationMetrics compute_classification_metrics(const std::vector<double>& probs,
                                                     const std::vector<int32_t>& labels, int num_classes,
                                                     int num_bins = 15);
// Same on float probabilities (each value widened to double first).
ClassificationMetrics compute_classification_metrics(const std::vector<float>& probs,
                                                     const std::vector<int32_t>& labels, int num_classes,
                                                     int num_bins = 15);

// The predicted class of one row of C probabilities: the argmax, ties to the lowest index.
inline size_t predicted_class(const double* row, size_t C) {
  size_t pred = 0;
  for (size_t c = 1; c < C; ++c)
    if (row[c] > row[pred]) pred = c;
  return pred;
}

// The calibration bin (see above) of a confidence in [0, 1].
int calibration_bin(double confidence, int num_bins);

// Reliability diagram data: per bin, count, mean confidence and accuracy (0 for empty bins).
struct ReliabilityBins {
  std::vector<int64_t> count;
  std::vector<double> confidence, accuracy;
};
ReliabilityBins reliability_bins(const std::vector<double>& probs, const std::vector<int32_t>& labels,
                                 int num_classes, int num_bins = 15);

// ROC curve points (false positive rate, true positive rate) from (0,0) to (1,1), one point per
// distinct score threshold (descending); empty when one class is absent.
struct RocCurve {
  std::vector<double> fpr, tpr;
};
RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int32_t>& labels);

// ROC AUC of scores for positives (label 1) against negatives (label 0), mid-ranks for ties.
// Returns -1 when one class is absent.
double roc_auc(const std::vector<double>& scores, const std::vector<int32_t>& labels);

// Collapse six-way probabilities to binary by summing class groups: classes in positive_classes -> 1.
std::vector<float> collapse_probs(const std::vector<float>& probs, int num_classes,
                                  const std::vector<int>& positive_classes);
std::vector<double> collapse_probs(const std::vector<double>& probs, int num_classes,
                                   const std::vector<int>& positive_classes);

}  // namespace smt
