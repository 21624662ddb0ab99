// The linear baseline printed beside the model: hashed word uni+bigrams and character 3-5-grams
// (signed feature hashing into 2^hash_bits buckets, counts L2-normalised per example) and a
// multinomial logistic regression, mean cross-entropy + l2/2 |W|^2 (bias not penalised), fitted by
// full-batch L-BFGS in double precision. Everything is sequential and seedless: the same data
// gives bit-identical weights on every run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace smt {

struct NgramBaselineConfig {
  int hash_bits = 18;
  int char_min = 3, char_max = 5;
  double l2 = 1e-4;       // on the mean loss (scikit-learn's C = 1 for n = 10^4)
  int max_iterations = 150;
  int lbfgs_memory = 7;
  double tolerance = 1e-7;  // stop when the loss decreases by less than tolerance * max(1, loss)
};

// One example's features: ascending unique bucket indices and their (signed, normalised) values.
struct SparseRow {
  std::vector<uint32_t> idx;
  std::vector<float> val;
};

// Model-input text of an example: its bytes, field separators as newlines, other specials dropped.
std::string example_text(const Example& example);
SparseRow ngram_features(const std::string& text, const NgramBaselineConfig& config);

class NgramLogisticRegression {
 public:
  explicit NgramLogisticRegression(NgramBaselineConfig config = {}) : config_(config) {}

  void fit(const std::vector<SparseRow>& rows, const std::vector<int32_t>& labels, int num_classes);
  void fit(const Dataset& train);  // features of every example, then fit
  // Class probabilities [n, C].
  std::vector<double> predict_proba(const std::vector<SparseRow>& rows) const;
  std::vector<double> predict_proba(const Dataset& data) const;

  int num_classes() const { return num_classes_; }
  int iterations() const { return iterations_; }   // L-BFGS iterations run
  double final_loss() const { return final_loss_; }  // training objective at the end
  // Weights of the buckets seen in training ([num_used, C], then bias [C]) (tests, determinism).
  const std::vector<double>& weights() const { return w_; }

 private:
  NgramBaselineConfig config_;
  int num_classes_ = 0;
  std::vector<uint32_t> used_buckets_;  // ascending; bucket -> row of w_ by binary search
  std::vector<double> w_;
  int iterations_ = 0;
  double final_loss_ = 0;
};

}  // namespace smt
