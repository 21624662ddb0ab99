// Tests of the classification metrics against scikit-learn reference values committed in
// tests/fixtures/metrics_reference.txt (made by tests/fixtures/make_metrics_reference.py), plus
// hand-computed ECE, NLL clamping, AUC edge cases and probability collapsing.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "eval/metrics.h"

namespace smt {
namespace {

struct RefCase {
  std::string name;
  std::map<std::string, std::vector<std::string>> values;
  std::vector<double> get(const std::string& key) const {
    std::vector<double> out;
    for (const auto& s : values.at(key)) out.push_back(std::stod(s));
    return out;
  }
  double scalar(const std::string& key) const { return get(key).at(0); }
};

std::vector<RefCase> load_reference() {
  const std::string path = std::string(SMT_SOURCE_DIR) + "/tests/fixtures/metrics_reference.txt";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<RefCase> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string key;
    ss >> key;
    if (key == "case") {
      cases.emplace_back();
      ss >> cases.back().name;
      continue;
    }
    if (key == "end") continue;
    std::vector<std::string> vals;
    for (std::string v; ss >> v;) vals.push_back(v);
    cases.back().values[key] = vals;
  }
  return cases;
}

TEST(MetricsReference, MatchesScikitLearn) {
  const auto cases = load_reference();
  ASSERT_EQ(cases.size(), 4u);
  for (const auto& rc : cases) {
    SCOPED_TRACE(rc.name);
    const int C = static_cast<int>(rc.scalar("num_classes"));
    std::vector<int32_t> labels;
    for (double v : rc.get("labels")) labels.push_back(static_cast<int32_t>(v));
    const std::vector<double> probs = rc.get("probs");
    ASSERT_EQ(labels.size(), static_cast<size_t>(rc.scalar("n")));
    const auto m = compute_classification_metrics(probs, labels, C);
    EXPECT_EQ(m.n, static_cast<int64_t>(labels.size()));
    EXPECT_EQ(m.num_classes, C);
    const double tol = 1e-9;  // the bar; the values are read from the same decimal text
    EXPECT_NEAR(m.accuracy, rc.scalar("accuracy"), 1e-12);
    EXPECT_NEAR(m.ece, rc.scalar("ece"), tol);
    EXPECT_NEAR(m.macro_f1, rc.scalar("macro_f1"), 1e-12);
    const auto prec = rc.get("precision"), rec = rc.get("recall"), f1 = rc.get("f1"), sup = rc.get("support");
    ASSERT_EQ(m.per_class.size(), static_cast<size_t>(C));
    for (size_t c = 0; c < static_cast<size_t>(C); ++c) {
      EXPECT_NEAR(m.per_class[c].precision, prec[c], 1e-12) << "class " << c;
      EXPECT_NEAR(m.per_class[c].recall, rec[c], 1e-12) << "class " << c;
      EXPECT_NEAR(m.per_class[c].f1, f1[c], 1e-12) << "class " << c;
      EXPECT_EQ(m.per_class[c].support, static_cast<int64_t>(sup[c])) << "class " << c;
    }
    const auto conf = rc.get("confusion");
    for (size_t i = 0; i < static_cast<size_t>(C); ++i)
      for (size_t j = 0; j < static_cast<size_t>(C); ++j)
        EXPECT_EQ(m.confusion[i][j], static_cast<int64_t>(conf[i * static_cast<size_t>(C) + j])) << i << "," << j;
    EXPECT_NEAR(m.nll, rc.scalar("nll"), tol);
    EXPECT_NEAR(m.brier, rc.scalar("brier"), tol);
    // The float entry point agrees to float precision.
    const auto mf = compute_classification_metrics(std::vector<float>(probs.begin(), probs.end()), labels, C);
    EXPECT_NEAR(mf.nll, m.nll, 1e-6);
    EXPECT_EQ(mf.confusion, m.confusion);
    if (C == 2) {
      EXPECT_NEAR(m.auc, rc.scalar("auc"), tol);
      EXPECT_NEAR(m.brier / 2, rc.scalar("brier_binary_sklearn"), tol);
      std::vector<double> scores;
      for (size_t i = 0; i < labels.size(); ++i) scores.push_back(probs[2 * i + 1]);
      EXPECT_NEAR(roc_auc(scores, labels), rc.scalar("auc"), tol);
      // The area under the ROC curve's points (trapezoids) is the same AUC.
      const RocCurve roc = roc_curve(scores, labels);
      double area = 0;
      for (size_t i = 1; i < roc.fpr.size(); ++i)
        area += (roc.fpr[i] - roc.fpr[i - 1]) * (roc.tpr[i] + roc.tpr[i - 1]) / 2;
      EXPECT_NEAR(area, rc.scalar("auc"), tol);
      EXPECT_EQ(roc.fpr.back(), 1.0);
      EXPECT_EQ(roc.tpr.back(), 1.0);
    } else {
      EXPECT_EQ(m.auc, -1);
    }
  }
}

TEST(MetricsEce, HandComputedSmallCase) {
  // (p0, p1), label -> top-class confidence, bin (of 15), correct?
  const std::vector<float> probs = {0.95f, 0.05f,   // 0.95 bin 14, correct
                                    0.03f, 0.97f,   // 0.97 bin 14, wrong
                                    0.62f, 0.38f,   // 0.62 bin 9, correct
                                    0.35f, 0.65f,   // 0.65 bin 9, correct
                                    0.5f, 0.5f,     // tie -> class 0, 0.5 bin 7, wrong
                                    0.0f, 1.0f};    // 1.0 falls in the last bin (14), correct
  const std::vector<int32_t> labels = {0, 0, 0, 1, 1, 1};
  const auto m = compute_classification_metrics(probs, labels, 2);
  // bin 14: |0.95+0.97+1.0 - 2| = 0.92; bin 9: |0.62+0.65 - 2| = 0.73; bin 7: |0.5 - 0| = 0.5.
  EXPECT_NEAR(m.ece, (0.92 + 0.73 + 0.5) / 6, 1e-6);
  EXPECT_NEAR(m.accuracy, 4.0 / 6, 1e-12);
  EXPECT_EQ(m.confusion[1][0], 1);  // the tie predicted class 0
  // With one bin the ECE is |mean confidence - accuracy|.
  const auto one = compute_classification_metrics(probs, labels, 2, 1);
  EXPECT_NEAR(one.ece, std::abs((0.95 + 0.97 + 0.62 + 0.65 + 0.5 + 1.0) / 6 - 4.0 / 6), 1e-6);
}

TEST(MetricsEce, BinsAreRightClosedLikeScikitLearn) {
  // numpy.searchsorted(numpy.linspace(0, 1, 16)[1:-1], v): 0.2 lands in bin 2 because the edge
  // 3 * (1/15) is one ulp below 0.2; 0.4 = 6 * (1/15) exactly, so it closes bin 5.
  EXPECT_EQ(calibration_bin(0.0, 15), 0);
  EXPECT_EQ(calibration_bin(1.0 / 15, 15), 0);
  EXPECT_EQ(calibration_bin(0.2, 15), 2);
  EXPECT_EQ(calibration_bin(0.4, 15), 5);
  EXPECT_EQ(calibration_bin(0.41, 15), 6);
  EXPECT_EQ(calibration_bin(1.0, 15), 14);
  EXPECT_EQ(calibration_bin(0.5, 1), 0);
  const auto r = reliability_bins({0.9, 0.1, 0.2, 0.8, 0.45, 0.55}, {0, 0, 1}, 2, 15);
  // confidences 0.9 (bin 13, right), 0.8 (bin 11, wrong), 0.55 (bin 8, right)
  EXPECT_EQ(r.count[13], 1);
  EXPECT_EQ(r.count[11], 1);
  EXPECT_EQ(r.count[8], 1);
  EXPECT_DOUBLE_EQ(r.accuracy[13], 1.0);
  EXPECT_DOUBLE_EQ(r.accuracy[11], 0.0);
  EXPECT_DOUBLE_EQ(r.confidence[8], 0.55);
  EXPECT_EQ(r.count[0] + r.count[14], 0);
}

TEST(MetricsNll, ClampsZeroProbability) {
  const std::vector<float> probs = {1.0f, 0.0f, 0.25f, 0.75f};
  const auto m = compute_classification_metrics(probs, {1, 1}, 2);
  EXPECT_NEAR(m.nll, (-std::log(1e-12) - std::log(0.75)) / 2, 1e-6);
  EXPECT_NEAR(m.brier, (2.0 + 2 * 0.0625) / 2, 1e-6);
}

TEST(MetricsAuc, EdgeCases) {
  EXPECT_EQ(roc_auc({0.1, 0.2}, {1, 1}), -1);
  EXPECT_EQ(roc_auc({0.1, 0.2}, {0, 0}), -1);
  EXPECT_DOUBLE_EQ(roc_auc({0.5, 0.5, 0.5, 0.5}, {0, 1, 0, 1}), 0.5);
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.2, 0.8, 0.9}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9, 0.8, 0.2, 0.1}, {0, 0, 1, 1}), 0.0);
  // One tie between a positive and a negative counts one half: pairs (p,n): (0.4>0.1)=1,
  // (0.4 vs 0.4)=0.5, (0.7>0.1)=1, (0.7>0.4)=1 -> 3.5 / 4.
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.4, 0.4, 0.7}, {0, 0, 1, 1}), 0.875);
  EXPECT_THROW(roc_auc({0.1, 0.2}, {0, 2}), Error);
  EXPECT_THROW(roc_auc({0.1}, {0, 1}), Error);
}

TEST(MetricsCollapse, SixWayToBinary) {
  const std::vector<float> six = {0.1f, 0.2f, 0.1f, 0.3f, 0.2f, 0.1f,  //
                                  0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f};
  const auto two = collapse_probs(six, 6, {3, 4, 5});
  ASSERT_EQ(two.size(), 4u);
  EXPECT_NEAR(two[0], 0.4f, 1e-6);
  EXPECT_NEAR(two[1], 0.6f, 1e-6);
  EXPECT_NEAR(two[2], 0.0f, 1e-6);
  EXPECT_NEAR(two[3], 1.0f, 1e-6);
  EXPECT_THROW(collapse_probs(six, 6, {6}), Error);
  EXPECT_THROW(collapse_probs(six, 5, {1}), Error);
}

TEST(MetricsInput, RejectsBadShapes) {
  EXPECT_THROW(compute_classification_metrics(std::vector<float>{0.5f, 0.5f}, {0, 1}, 2), Error);
  EXPECT_THROW(compute_classification_metrics(std::vector<float>{0.5f, 0.5f}, {2}, 2), Error);
  const auto empty = compute_classification_metrics(std::vector<double>{}, {}, 3);
  EXPECT_EQ(empty.n, 0);
  EXPECT_EQ(empty.confusion.size(), 3u);
}

}  // namespace
}  // namespace smt
