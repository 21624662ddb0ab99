// Classification metrics over predicted class probabilities, as a fact-checking paper reports
// them: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix (rows = true label),
// NLL, Brier score, ECE (equal-width bins on top-class confidence) and, for two classes,
// ROC AUC with mid-ranks for ties (equal to scikit-learn's roc_auc_score).
#pragma once
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
// ece over num_bins equal-width bins of top-class confidence (bin i = [i/B, (i+1)/B), the last closed).
ClassificationMetrics compute_classification_metrics(const std::vector<float>& probs,
                                                     const std::vector<int32_t>& labels, int num_classes,
                                                     int num_bins = 15);

// ROC AUC of scores for positives (label 1) against negatives (label 0), mid-ranks for ties.
// Returns -1 when one class is absent.
double roc_auc(const std::vector<double>& scores, const std::vector<int32_t>& labels);

// Collapse six-way probabilities to binary by summing class groups: classes in positive_classes -> 1.
std::vector<float> collapse_probs(const std::vector<float>& probs, int num_classes,
                                  const std::vector<int>& positive_classes);

}  // namespace smt
