// Classification metrics over predicted probabilities (see metrics.h for the definitions).
// Conventions follow scikit-learn: undefined precision/recall/F1 are 0 (zero_division=0), the
// macro-F1 averages over all C classes, ROC AUC uses mid-ranks for tied scores.
#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace smt {

double roc_auc(const std::vector<double>& scores, const std::vector<int32_t>& labels) {
  SMT_CHECK(scores.size() == labels.size(), "roc_auc: ", scores.size(), " scores but ", labels.size(), " labels");
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mann-Whitney U: sum of positive ranks (1-based, ties share the mean rank).
  double rank_sum_pos = 0;
  int64_t num_pos = 0, num_neg = 0;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j + 1 < n && scores[order[j + 1]] == scores[order[i]]) ++j;
    const double mid_rank = 0.5 * static_cast<double>(i + 1 + j + 1);
    for (size_t k = i; k <= j; ++k) {
      const int32_t y = labels[order[k]];
      SMT_CHECK(y == 0 || y == 1, "roc_auc: label ", y, " is neither 0 nor 1");
      if (y == 1) {
        rank_sum_pos += mid_rank;
        ++num_pos;
      } else {
        ++num_neg;
      }
    }
    i = j + 1;
  }
  if (num_pos == 0 || num_neg == 0) return -1.0;
  const double p = static_cast<double>(num_pos), q = static_cast<double>(num_neg);
  return (rank_sum_pos - p * (p + 1) / 2) / (p * q);
}

int calibration_bin(double confidence, int num_bins) {
  // numpy.searchsorted(edges[1:-1], confidence, side='left'): the number of interior edges below it.
  const double step = 1.0 / static_cast<double>(num_bins);
  int b = 0;
  while (b < num_bins - 1 && static_cast<double>(b + 1) * step < confidence) ++b;
  return b;
}

ReliabilityBins reliability_bins(const std::vector<double>& probs, const std::vector<int32_t>& labels,
                                 int num_classes, int num_bins) {
  SMT_CHECK(num_classes > 0 && num_bins > 0, "reliability_bins: bad num_classes/num_bins");
  const auto C = static_cast<size_t>(num_classes);
  SMT_CHECK(probs.size() == labels.size() * C, "reliability_bins: probs has ", probs.size(), " values, expected ",
            labels.size(), " x ", C);
  ReliabilityBins r;
  r.count.assign(static_cast<size_t>(num_bins), 0);
  r.confidence.assign(static_cast<size_t>(num_bins), 0.0);
  r.accuracy.assign(static_cast<size_t>(num_bins), 0.0);
  for (size_t i = 0; i < labels.size(); ++i) {
    const double* p = probs.data() + i * C;
    const size_t pred = predicted_class(p, C);
    const auto b = static_cast<size_t>(calibration_bin(p[pred], num_bins));
    r.count[b] += 1;
    r.confidence[b] += p[pred];
    r.accuracy[b] += pred == static_cast<size_t>(labels[i]) ? 1.0 : 0.0;
  }
  for (size_t b = 0; b < r.count.size(); ++b)
    if (r.count[b] > 0) {
      r.confidence[b] /= static_cast<double>(r.count[b]);
      r.accuracy[b] /= static_cast<double>(r.count[b]);
    }
  return r;
}

RocCurve roc_curve(const std::vector<double>& scores, const std::vector<int32_t>& labels) {
  SMT_CHECK(scores.size() == labels.size(), "roc_curve: ", scores.size(), " scores but ", labels.size(), " labels");
  const size_t n = scores.size();
  int64_t num_pos = 0;
  for (int32_t y : labels) {
    SMT_CHECK(y == 0 || y == 1, "roc_curve: label ", y, " is neither 0 nor 1");
    num_pos += y;
  }
  const int64_t num_neg = static_cast<int64_t>(n) - num_pos;
  RocCurve c;
  if (num_pos == 0 || num_neg == 0) return c;
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  c.fpr.push_back(0);
  c.tpr.push_back(0);
  int64_t tp = 0, fp = 0;
  for (size_t i = 0; i < n; ++i) {
    (labels[order[i]] == 1 ? tp : fp) += 1;
    if (i + 1 < n && scores[order[i + 1]] == scores[order[i]]) continue;  // one point per threshold
    c.fpr.push_back(static_cast<double>(fp) / static_cast<double>(num_neg));
    c.tpr.push_back(static_cast<double>(tp) / static_cast<double>(num_pos));
  }
  return c;
}

ClassificationMetrics compute_classification_metrics(const std::vector<float>& probs,
                                                     const std::vector<int32_t>& labels, int num_classes,
                                                     int num_bins) {
  return compute_classification_metrics(std::vector<double>(probs.begin(), probs.end()), labels, num_classes,
                                        num_bins);
}

ClassificationMetrics compute_classification_metrics(const std::vector<double>& probs,
                                                     const std::vector<int32_t>& labels, int num_classes,
                                                     int num_bins) {
  SMT_CHECK(num_classes > 0, "metrics: num_classes must be positive, got ", num_classes);
  SMT_CHECK(num_bins > 0, "metrics: num_bins must be positive, got ", num_bins);
  const auto C = static_cast<size_t>(num_classes);
  const size_t n = labels.size();
  SMT_CHECK(probs.size() == n * C, "metrics: probs has ", probs.size(), " values, expected ", n, " x ", C);
  ClassificationMetrics m;
  m.n = static_cast<int64_t>(n);
  m.num_classes = num_classes;
  m.confusion.assign(C, std::vector<int64_t>(C, 0));
  m.per_class.assign(C, ClassMetrics{});
  std::vector<double> bin_count(static_cast<size_t>(num_bins), 0), bin_conf(static_cast<size_t>(num_bins), 0),
      bin_correct(static_cast<size_t>(num_bins), 0);
  int64_t correct = 0;
  double nll = 0, brier = 0;
  for (size_t i = 0; i < n; ++i) {
    const int32_t y = labels[i];
    SMT_CHECK(y >= 0 && y < num_classes, "metrics: label ", y, " of row ", i, " outside [0, ", num_classes, ")");
    const double* p = probs.data() + i * C;
    const size_t pred = predicted_class(p, C);
    ++m.confusion[static_cast<size_t>(y)][pred];
    const bool hit = pred == static_cast<size_t>(y);
    correct += hit ? 1 : 0;
    nll += -std::log(std::max(p[y], 1e-12));
    for (size_t c = 0; c < C; ++c) {
      const double d = p[c] - (c == static_cast<size_t>(y) ? 1.0 : 0.0);
      brier += d * d;
    }
    const double conf = p[pred];
    const int b = calibration_bin(conf, num_bins);
    bin_count[static_cast<size_t>(b)] += 1;
    bin_conf[static_cast<size_t>(b)] += conf;
    bin_correct[static_cast<size_t>(b)] += hit ? 1 : 0;
  }
  if (n > 0) {
    const double dn = static_cast<double>(n);
    m.accuracy = static_cast<double>(correct) / dn;
    m.nll = nll / dn;
    m.brier = brier / dn;
    double ece = 0;
    for (size_t b = 0; b < bin_count.size(); ++b)
      if (bin_count[b] > 0) ece += std::abs(bin_conf[b] - bin_correct[b]) / dn;  // (count/n)*|conf-acc|
    m.ece = ece;
  }
  double f1_sum = 0;
  for (size_t c = 0; c < C; ++c) {
    int64_t tp = m.confusion[c][c], support = 0, predicted = 0;
    for (size_t k = 0; k < C; ++k) {
      support += m.confusion[c][k];
      predicted += m.confusion[k][c];
    }
    ClassMetrics& cm = m.per_class[c];
    cm.support = support;
    cm.precision = predicted > 0 ? static_cast<double>(tp) / static_cast<double>(predicted) : 0.0;
    cm.recall = support > 0 ? static_cast<double>(tp) / static_cast<double>(support) : 0.0;
    cm.f1 = (cm.precision + cm.recall) > 0 ? 2 * cm.precision * cm.recall / (cm.precision + cm.recall) : 0.0;
    f1_sum += cm.f1;
  }
  m.macro_f1 = f1_sum / static_cast<double>(C);
  if (num_classes == 2) {
    std::vector<double> scores(n);
    for (size_t i = 0; i < n; ++i) scores[i] = probs[i * C + 1];
    m.auc = roc_auc(scores, labels);
  }
  return m;
}

std::vector<float> collapse_probs(const std::vector<float>& probs, int num_classes,
                                  const std::vector<int>& positive_classes) {
  const std::vector<double> out = collapse_probs(std::vector<double>(probs.begin(), probs.end()), num_classes,
                                                 positive_classes);
  return std::vector<float>(out.begin(), out.end());
}

std::vector<double> collapse_probs(const std::vector<double>& probs, int num_classes,
                                   const std::vector<int>& positive_classes) {
  SMT_CHECK(num_classes > 0, "collapse_probs: num_classes must be positive, got ", num_classes);
  const auto C = static_cast<size_t>(num_classes);
  SMT_CHECK(probs.size() % C == 0, "collapse_probs: ", probs.size(), " values are not rows of ", C);
  std::vector<bool> positive(C, false);
  for (int c : positive_classes) {
    SMT_CHECK(c >= 0 && c < num_classes, "collapse_probs: positive class ", c, " outside [0, ", num_classes, ")");
    positive[static_cast<size_t>(c)] = true;
  }
  const size_t n = probs.size() / C;
  std::vector<double> out(2 * n);
  for (size_t i = 0; i < n; ++i) {
    double pos = 0, neg = 0;
    for (size_t c = 0; c < C; ++c) (positive[c] ? pos : neg) += probs[i * C + c];
    out[2 * i] = neg;
    out[2 * i + 1] = pos;
  }
  return out;
}

}  // namespace smt
