// Bootstrap intervals and paired comparisons of evaluation metrics (see resampling.h).
#include "eval/resampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "eval/metrics.h"

namespace smt {

WeightedScorer::WeightedScorer(const std::vector<double>& probs, const std::vector<int32_t>& labels, int num_classes)
    : num_classes_(num_classes), labels_(labels) {
  SMT_CHECK(num_classes > 0, "bootstrap: num_classes must be positive, got ", num_classes);
  const auto C = static_cast<size_t>(num_classes);
  const size_t n = labels.size();
  SMT_CHECK(probs.size() == n * C, "bootstrap: probs has ", probs.size(), " values, expected ", n, " x ", C);
  pred_.resize(n);
  correct_.resize(n);
  nll_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int32_t y = labels[i];
    SMT_CHECK(y >= 0 && y < num_classes, "bootstrap: label ", y, " of row ", i, " outside [0, ", num_classes, ")");
    const double* p = probs.data() + i * C;
    const size_t pred = predicted_class(p, C);
    pred_[i] = static_cast<int32_t>(pred);
    correct_[i] = pred == static_cast<size_t>(y) ? 1 : 0;
    nll_[i] = -std::log(std::max(p[y], 1e-12));
  }
  if (num_classes == 2) {
    score_.resize(n);
    for (size_t i = 0; i < n; ++i) score_[i] = probs[2 * i + 1];
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), size_t{0});
    std::sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return score_[a] < score_[b]; });
  }
}

WeightedScorer::Metrics WeightedScorer::score(const std::vector<int32_t>& weights) const {
  const size_t n = labels_.size();
  SMT_CHECK(weights.size() == n, "bootstrap: ", weights.size(), " weights for ", n, " examples");
  const auto C = static_cast<size_t>(num_classes_);
  std::vector<double> confusion(C * C, 0.0);  // [true][predicted], weighted counts
  double total = 0, correct = 0, nll = 0;
  for (size_t i = 0; i < n; ++i) {
    if (weights[i] == 0) continue;
    SMT_CHECK(weights[i] > 0, "bootstrap: negative weight ", weights[i], " of example ", i);
    const double w = weights[i];
    total += w;
    confusion[static_cast<size_t>(labels_[i]) * C + static_cast<size_t>(pred_[i])] += w;
    correct += correct_[i] ? w : 0.0;
    nll += w * nll_[i];
  }
  SMT_CHECK(total > 0, "bootstrap: the weights select no example");
  Metrics m;
  m.accuracy = correct / total;
  m.nll = nll / total;
  double f1_sum = 0;
  for (size_t c = 0; c < C; ++c) {
    double support = 0, predicted = 0;
    for (size_t k = 0; k < C; ++k) {
      support += confusion[c * C + k];
      predicted += confusion[k * C + c];
    }
    const double tp = confusion[c * C + c];
    const double precision = predicted > 0 ? tp / predicted : 0.0;
    const double recall = support > 0 ? tp / support : 0.0;
    f1_sum += (precision + recall) > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
  }
  m.macro_f1 = f1_sum / static_cast<double>(C);
  if (num_classes_ == 2) {
    // Pairs (positive, negative) with the positive scored higher, ties counted half: walk the tie
    // groups in ascending score order with the negative weight seen below each group.
    double pairs_won = 0, neg_below = 0, pos_total = 0;
    size_t i = 0;
    while (i < n) {
      size_t j = i;
      double pos = 0, neg = 0;
      while (j < n && score_[order_[j]] == score_[order_[i]]) {
        const size_t e = order_[j++];
        (labels_[e] == 1 ? pos : neg) += weights[e];
      }
      pairs_won += pos * (neg_below + 0.5 * neg);
      neg_below += neg;
      pos_total += pos;
      i = j;
    }
    m.auc = pos_total > 0 && neg_below > 0 ? pairs_won / (pos_total * neg_below) : -1.0;
  }
  return m;
}

WeightedScorer::Metrics WeightedScorer::score_all() const {
  return score(std::vector<int32_t>(labels_.size(), 1));
}

void bootstrap_weights(int64_t n, uint64_t seed, int64_t b, std::vector<int32_t>& weights) {
  SMT_CHECK(n > 0 && b >= 0, "bootstrap: need n > 0 and b >= 0, got n = ", n, ", b = ", b);
  weights.assign(static_cast<size_t>(n), 0);
  Rng rng(seed, static_cast<uint64_t>(b));
  for (int64_t j = 0; j < n; ++j) ++weights[static_cast<size_t>(rng.below(static_cast<uint64_t>(n)))];
}

double quantile(std::vector<double> values, double q) {
  SMT_CHECK(!values.empty(), "quantile of no values");
  SMT_CHECK(q >= 0 && q <= 1, "quantile: q must be in [0, 1], got ", q);
  std::sort(values.begin(), values.end());
  const double h = q * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

namespace {

void check_settings(const BootstrapSettings& s) {
  SMT_CHECK(s.resamples >= 1, "bootstrap: resamples must be >= 1, got ", s.resamples);
  SMT_CHECK(s.level > 0 && s.level < 1, "bootstrap: level must be in (0, 1), got ", s.level);
}

Interval central_interval(const std::vector<double>& values, double level) {
  return {quantile(values, 0.5 * (1 - level)), quantile(values, 0.5 * (1 + level))};
}

Difference difference(double value, const std::vector<double>& resampled, double level) {
  Difference d;
  d.value = value;
  d.ci = central_interval(resampled, level);
  // Metrics of finite sets take discrete values, and a resample often lands exactly on 2 * value
  // (or 0); computed through different roundings, such a tie can miss the >= by an ulp. A relative
  // slack far above rounding (1e-16) and far below any real gap (>= 1/n) counts the ties as ties.
  const double bound = std::abs(value) * (1 - 1e-9);
  int64_t as_extreme = 0;
  for (double x : resampled) as_extreme += std::abs(x - value) >= bound ? 1 : 0;
  d.p = static_cast<double>(1 + as_extreme) / static_cast<double>(1 + resampled.size());
  return d;
}

}  // namespace

MetricIntervals bootstrap_intervals(const WeightedScorer& system, const BootstrapSettings& settings) {
  check_settings(settings);
  const auto B = static_cast<size_t>(settings.resamples);
  std::vector<double> accuracy, macro_f1, nll, auc;
  accuracy.reserve(B);
  macro_f1.reserve(B);
  nll.reserve(B);
  std::vector<int32_t> weights;
  for (size_t b = 0; b < B; ++b) {
    bootstrap_weights(system.size(), settings.seed, static_cast<int64_t>(b), weights);
    const WeightedScorer::Metrics m = system.score(weights);
    accuracy.push_back(m.accuracy);
    macro_f1.push_back(m.macro_f1);
    nll.push_back(m.nll);
    if (m.auc >= 0) auc.push_back(m.auc);
  }
  MetricIntervals r;
  r.accuracy = central_interval(accuracy, settings.level);
  r.macro_f1 = central_interval(macro_f1, settings.level);
  r.nll = central_interval(nll, settings.level);
  r.has_auc = 2 * auc.size() >= B && !auc.empty();
  if (r.has_auc) r.auc = central_interval(auc, settings.level);
  return r;
}

PairedComparison compare_paired(const WeightedScorer& a, const WeightedScorer& b, const BootstrapSettings& settings) {
  check_settings(settings);
  SMT_CHECK(a.labels() == b.labels(), "paired comparison: the two systems were scored on different examples");
  const auto B = static_cast<size_t>(settings.resamples);
  const WeightedScorer::Metrics ma = a.score_all(), mb = b.score_all();
  std::vector<double> accuracy, macro_f1, nll, auc;
  std::vector<int32_t> weights;
  for (size_t r = 0; r < B; ++r) {
    bootstrap_weights(a.size(), settings.seed, static_cast<int64_t>(r), weights);
    const WeightedScorer::Metrics ra = a.score(weights), rb = b.score(weights);
    accuracy.push_back(ra.accuracy - rb.accuracy);
    macro_f1.push_back(ra.macro_f1 - rb.macro_f1);
    nll.push_back(ra.nll - rb.nll);
    if (ra.auc >= 0 && rb.auc >= 0) auc.push_back(ra.auc - rb.auc);
  }
  PairedComparison c;
  c.accuracy = difference(ma.accuracy - mb.accuracy, accuracy, settings.level);
  c.macro_f1 = difference(ma.macro_f1 - mb.macro_f1, macro_f1, settings.level);
  c.nll = difference(ma.nll - mb.nll, nll, settings.level);
  c.has_auc = ma.auc >= 0 && mb.auc >= 0 && 2 * auc.size() >= B && !auc.empty();
  if (c.has_auc) c.auc = difference(ma.auc - mb.auc, auc, settings.level);
  for (int64_t i = 0; i < a.size(); ++i) {
    const bool ok_a = a.correct()[static_cast<size_t>(i)] != 0, ok_b = b.correct()[static_cast<size_t>(i)] != 0;
    c.only_a_correct += ok_a && !ok_b ? 1 : 0;
    c.only_b_correct += ok_b && !ok_a ? 1 : 0;
  }
  c.mcnemar_p = mcnemar_exact_p(c.only_a_correct, c.only_b_correct);
  return c;
}

double mcnemar_exact_p(int64_t b, int64_t c) {
  SMT_CHECK(b >= 0 && c >= 0, "McNemar: counts must be >= 0, got ", b, " and ", c);
  const int64_t trials = b + c;
  if (trials == 0) return 1.0;
  const int64_t k = std::min(b, c);
  // P[X <= k] for X ~ Binomial(trials, 1/2), each term in logs (trials may be large).
  const double log_norm = std::lgamma(static_cast<double>(trials) + 1) - static_cast<double>(trials) * std::log(2.0);
  double tail = 0;
  for (int64_t i = 0; i <= k; ++i)
    tail += std::exp(log_norm - std::lgamma(static_cast<double>(i) + 1) -
                     std::lgamma(static_cast<double>(trials - i) + 1));
  // Never exactly 0 (the terms underflow for extreme counts such as 0 vs 1100).
  return std::min(1.0, std::max(2 * tail, std::numeric_limits<double>::min()));
}

}  // namespace smt
