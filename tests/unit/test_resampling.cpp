// Bootstrap intervals and paired comparisons (src/eval/resampling.h): weighted metrics against
// compute_classification_metrics on the duplicated examples (which tests/unit/test_metrics.cpp
// checks against scikit-learn), quantiles and McNemar p-values worked out by hand, and the
// statistical behaviour of the intervals and tests on sets whose answer is known.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/rng.h"
#include "eval/metrics.h"
#include "eval/resampling.h"

namespace smt {
namespace {

struct Set {
  std::vector<double> probs;
  std::vector<int32_t> labels;
};

// n random examples of C classes; with `ties`, scores come from a few levels so that AUC ties occur.
Set random_set(int64_t n, int C, uint64_t seed, bool ties = false) {
  Rng rng(seed);
  Set s;
  for (int64_t i = 0; i < n; ++i) {
    const auto y = static_cast<int32_t>(rng.below(static_cast<uint64_t>(C)));
    s.labels.push_back(y);
    std::vector<double> row(static_cast<size_t>(C));
    double sum = 0;
    for (int c = 0; c < C; ++c) {
      double v = ties ? std::floor(4 * rng.uniform()) + 1 : rng.uniform() + 0.1;
      if (c == y) v *= 1.6;  // better than chance
      row[static_cast<size_t>(c)] = v;
      sum += v;
    }
    for (double v : row) s.probs.push_back(v / sum);
  }
  return s;
}

// The set with example i repeated weights[i] times.
Set repeat(const Set& s, int C, const std::vector<int32_t>& weights) {
  Set out;
  for (size_t i = 0; i < s.labels.size(); ++i)
    for (int32_t k = 0; k < weights[i]; ++k) {
      out.labels.push_back(s.labels[i]);
      out.probs.insert(out.probs.end(), s.probs.begin() + static_cast<std::ptrdiff_t>(i) * C,
                       s.probs.begin() + static_cast<std::ptrdiff_t>(i + 1) * C);
    }
  return out;
}

TEST(Resampling, UnitWeightsGiveTheMetrics) {
  for (int C : {2, 6}) {
    for (bool ties : {false, true}) {
      SCOPED_TRACE("C " + std::to_string(C) + (ties ? " ties" : ""));
      const Set s = random_set(301, C, 7 + static_cast<uint64_t>(C), ties);
      const WeightedScorer scorer(s.probs, s.labels, C);
      const auto w = scorer.score_all();
      const ClassificationMetrics m = compute_classification_metrics(s.probs, s.labels, C);
      EXPECT_DOUBLE_EQ(w.accuracy, m.accuracy);
      EXPECT_DOUBLE_EQ(w.macro_f1, m.macro_f1);
      EXPECT_NEAR(w.nll, m.nll, 1e-12 * m.nll);
      if (C == 2) {
        EXPECT_GT(m.auc, 0.5);
        EXPECT_NEAR(w.auc, m.auc, 1e-12);
      } else {
        EXPECT_EQ(w.auc, -1.0);
      }
    }
  }
}

TEST(Resampling, WeightsCountAsCopies) {
  for (int C : {2, 3, 6}) {
    SCOPED_TRACE("C " + std::to_string(C));
    const Set s = random_set(157, C, 100 + static_cast<uint64_t>(C), /*ties=*/C == 2);
    const WeightedScorer scorer(s.probs, s.labels, C);
    for (int64_t b = 0; b < 5; ++b) {
      std::vector<int32_t> weights;
      bootstrap_weights(scorer.size(), 11, b, weights);
      int64_t drawn = 0, absent = 0;
      for (int32_t k : weights) {
        drawn += k;
        absent += k == 0 ? 1 : 0;
      }
      ASSERT_EQ(drawn, scorer.size());
      EXPECT_GT(absent, 0);  // ~ n/e examples are left out of a resample
      const Set r = repeat(s, C, weights);
      const ClassificationMetrics m = compute_classification_metrics(r.probs, r.labels, C);
      const auto w = scorer.score(weights);
      EXPECT_DOUBLE_EQ(w.accuracy, m.accuracy);
      EXPECT_DOUBLE_EQ(w.macro_f1, m.macro_f1);
      EXPECT_NEAR(w.nll, m.nll, 1e-12 * m.nll);
      if (C == 2) EXPECT_NEAR(w.auc, m.auc, 1e-12);
    }
  }
}

TEST(Resampling, AucUndefinedWithoutBothClasses) {
  const Set s = random_set(40, 2, 3);
  const WeightedScorer scorer(s.probs, s.labels, 2);
  std::vector<int32_t> only_first_class(s.labels.size(), 0);
  for (size_t i = 0; i < s.labels.size(); ++i) only_first_class[i] = s.labels[i] == 0 ? 1 : 0;
  EXPECT_EQ(scorer.score(only_first_class).auc, -1.0);
  EXPECT_THROW(scorer.score(std::vector<int32_t>(s.labels.size(), 0)), Error);
  EXPECT_THROW(scorer.score(std::vector<int32_t>(3, 1)), Error);
}

TEST(Resampling, ResamplesAreReproducible) {
  std::vector<int32_t> a, b, c;
  bootstrap_weights(1000, 5, 17, a);
  bootstrap_weights(1000, 5, 17, b);
  bootstrap_weights(1000, 5, 18, c);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  bootstrap_weights(1000, 6, 17, c);
  EXPECT_NE(a, c);
}

TEST(Resampling, QuantileInterpolatesLikeNumpy) {
  // numpy.quantile(1..10, q): position h = q * 9 between the order statistics.
  const std::vector<double> v{7, 3, 10, 1, 5, 2, 9, 4, 8, 6};
  EXPECT_DOUBLE_EQ(quantile(v, 0.025), 1.225);
  EXPECT_DOUBLE_EQ(quantile(v, 0.975), 9.775);
  EXPECT_DOUBLE_EQ(quantile(v, 0.5), 5.5);
  EXPECT_DOUBLE_EQ(quantile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(quantile(v, 1.0), 10.0);
  EXPECT_DOUBLE_EQ(quantile({4.0}, 0.3), 4.0);
  EXPECT_THROW(quantile({}, 0.5), Error);
  EXPECT_THROW(quantile(v, 1.5), Error);
}

TEST(Resampling, McNemarExactByHand) {
  EXPECT_DOUBLE_EQ(mcnemar_exact_p(0, 0), 1.0);
  EXPECT_DOUBLE_EQ(mcnemar_exact_p(3, 3), 1.0);                        // capped
  EXPECT_NEAR(mcnemar_exact_p(0, 5), 2.0 / 32.0, 1e-15);               // 2 * (1/2)^5
  EXPECT_NEAR(mcnemar_exact_p(10, 2), 2.0 * (1 + 12 + 66) / 4096.0, 1e-14);  // 2 * sum_{i<=2} C(12,i) / 2^12
  EXPECT_DOUBLE_EQ(mcnemar_exact_p(2, 10), mcnemar_exact_p(10, 2));
  // Large counts stay finite: 600 vs 400 discordant examples is far beyond chance.
  const double p = mcnemar_exact_p(600, 400);
  EXPECT_GT(p, 0.0);
  EXPECT_LT(p, 1e-9);
  EXPECT_GT(mcnemar_exact_p(0, 1100), 0.0);  // 2^-1099 underflows: reported as the smallest normal double
  EXPECT_THROW(mcnemar_exact_p(-1, 2), Error);
}

// Binary set whose argmax is right with probability `acc`, independently per example.
Set set_with_accuracy(int64_t n, double acc, uint64_t seed) {
  Rng rng(seed);
  Set s;
  for (int64_t i = 0; i < n; ++i) {
    const auto y = static_cast<int32_t>(rng.below(2));
    const bool right = rng.uniform() < acc;
    const double p1 = (y == 1) == right ? 0.7 : 0.3;
    s.labels.push_back(y);
    s.probs.push_back(1 - p1);
    s.probs.push_back(p1);
  }
  return s;
}

TEST(Resampling, AccuracyIntervalMatchesTheBinomialWidth) {
  const Set s = set_with_accuracy(2000, 0.7, 21);
  const WeightedScorer scorer(s.probs, s.labels, 2);
  const double acc = scorer.score_all().accuracy;
  const MetricIntervals ci = bootstrap_intervals(scorer, BootstrapSettings{2000, 3, 0.95});
  EXPECT_LT(ci.accuracy.lo, acc);
  EXPECT_GT(ci.accuracy.hi, acc);
  // The normal approximation's half-width 1.96 sqrt(p (1 - p) / n) = 0.0201 at p = 0.7, n = 2000.
  const double half = 1.96 * std::sqrt(acc * (1 - acc) / 2000.0);
  EXPECT_NEAR(0.5 * (ci.accuracy.hi - ci.accuracy.lo), half, 0.1 * half);
  EXPECT_NEAR(0.5 * (ci.accuracy.hi + ci.accuracy.lo), acc, 0.2 * half);
  ASSERT_TRUE(ci.has_auc);
  EXPECT_LE(ci.auc.lo, ci.auc.hi);
  EXPECT_LT(ci.nll.lo, ci.nll.hi);
  // A quarter of the examples: about twice as wide.
  const Set small = set_with_accuracy(500, 0.7, 22);
  const MetricIntervals ci_small = bootstrap_intervals(WeightedScorer(small.probs, small.labels, 2),
                                                       BootstrapSettings{2000, 3, 0.95});
  const double ratio = (ci_small.accuracy.hi - ci_small.accuracy.lo) / (ci.accuracy.hi - ci.accuracy.lo);
  EXPECT_GT(ratio, 1.7);
  EXPECT_LT(ratio, 2.3);
  // A wider level gives a wider interval; the same seed the same interval.
  const MetricIntervals ci99 = bootstrap_intervals(scorer, BootstrapSettings{2000, 3, 0.99});
  EXPECT_LT(ci99.accuracy.lo, ci.accuracy.lo);
  EXPECT_GT(ci99.accuracy.hi, ci.accuracy.hi);
  const MetricIntervals again = bootstrap_intervals(scorer, BootstrapSettings{2000, 3, 0.95});
  EXPECT_EQ(again.accuracy.lo, ci.accuracy.lo);
  EXPECT_EQ(again.accuracy.hi, ci.accuracy.hi);
  EXPECT_THROW(bootstrap_intervals(scorer, BootstrapSettings{0, 3, 0.95}), Error);
  EXPECT_THROW(bootstrap_intervals(scorer, BootstrapSettings{100, 3, 1.0}), Error);
}

TEST(Resampling, PairedComparisonOfASystemWithItself) {
  const Set s = random_set(300, 6, 31);
  const WeightedScorer a(s.probs, s.labels, 6);
  const PairedComparison c = compare_paired(a, a, BootstrapSettings{200, 1, 0.95});
  EXPECT_EQ(c.accuracy.value, 0.0);
  EXPECT_EQ(c.accuracy.ci.lo, 0.0);
  EXPECT_EQ(c.accuracy.ci.hi, 0.0);
  EXPECT_EQ(c.accuracy.p, 1.0);
  EXPECT_EQ(c.macro_f1.p, 1.0);
  EXPECT_FALSE(c.has_auc);
  EXPECT_EQ(c.only_a_correct, 0);
  EXPECT_EQ(c.only_b_correct, 0);
  EXPECT_EQ(c.mcnemar_p, 1.0);
}

TEST(Resampling, PairedComparisonFindsARealDifference) {
  // System a is right on 80% of 400 examples, b on 60%; the discordant pairs are counted by hand.
  const int64_t n = 400;
  Rng rng(41);
  Set a, b;
  int64_t only_a = 0, only_b = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto y = static_cast<int32_t>(rng.below(2));
    const bool ra = rng.uniform() < 0.8, rb = rng.uniform() < 0.6;
    only_a += ra && !rb ? 1 : 0;
    only_b += rb && !ra ? 1 : 0;
    for (auto [set, right] : {std::pair<Set*, bool>{&a, ra}, std::pair<Set*, bool>{&b, rb}}) {
      const double p1 = (y == 1) == right ? 0.8 : 0.2;
      set->labels.push_back(y);
      set->probs.push_back(1 - p1);
      set->probs.push_back(p1);
    }
  }
  const WeightedScorer sa(a.probs, a.labels, 2), sb(b.probs, b.labels, 2);
  const PairedComparison c = compare_paired(sa, sb, BootstrapSettings{1000, 2, 0.95});
  EXPECT_NEAR(c.accuracy.value, sa.score_all().accuracy - sb.score_all().accuracy, 1e-15);
  EXPECT_GT(c.accuracy.value, 0.1);
  EXPECT_GT(c.accuracy.ci.lo, 0.0);  // the interval excludes no difference
  EXPECT_LT(c.accuracy.p, 0.01);
  EXPECT_LT(c.nll.value, 0.0);  // a's NLL is lower
  EXPECT_LT(c.nll.ci.hi, 0.0);
  ASSERT_TRUE(c.has_auc);
  EXPECT_GT(c.auc.ci.lo, 0.0);
  EXPECT_EQ(c.only_a_correct, only_a);
  EXPECT_EQ(c.only_b_correct, only_b);
  EXPECT_EQ(c.mcnemar_p, mcnemar_exact_p(only_a, only_b));
  EXPECT_LT(c.mcnemar_p, 1e-6);
  // Reversed: the same evidence with the sign turned.
  const PairedComparison r = compare_paired(sb, sa, BootstrapSettings{1000, 2, 0.95});
  EXPECT_NEAR(r.accuracy.value, -c.accuracy.value, 1e-15);
  EXPECT_NEAR(r.accuracy.ci.lo, -c.accuracy.ci.hi, 1e-12);
  EXPECT_EQ(r.accuracy.p, c.accuracy.p);
  EXPECT_EQ(r.mcnemar_p, c.mcnemar_p);
  // Pairing: the difference's interval is narrower than the two systems' intervals side by side.
  const MetricIntervals ia = bootstrap_intervals(sa, BootstrapSettings{1000, 2, 0.95});
  const MetricIntervals ib = bootstrap_intervals(sb, BootstrapSettings{1000, 2, 0.95});
  EXPECT_LT(c.accuracy.ci.hi - c.accuracy.ci.lo,
            (ia.accuracy.hi - ia.accuracy.lo) + (ib.accuracy.hi - ib.accuracy.lo));
}

TEST(Resampling, PairedAccuracyPValueCountedInIntegers) {
  // 48 examples, a right on 30 (alone on 6), b on 26 (alone on 2): the accuracy difference d = 4/48
  // (30/48 - 26/48 in floats), each resample's d_b = D_b/48 with the integer D_b = sum w (right_a -
  // right_b). Many resamples land on D_b = 8 = 2D exactly and count as being as extreme as d
  // (|d_b - d| >= |d|); with these counts a plain float >= misses most of them (p 0.170, not 0.211).
  const int64_t n = 48;
  Set a, b;
  std::vector<int> right_a(n, 0), right_b(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    right_a[i] = i < 6 || i >= 24 ? 1 : 0;
    right_b[i] = (i >= 6 && i < 8) || i >= 24 ? 1 : 0;
    const int32_t y = static_cast<int32_t>(i % 2);
    for (auto [set, right] : {std::pair<Set*, int>{&a, right_a[i]}, std::pair<Set*, int>{&b, right_b[i]}}) {
      const double p1 = (y == 1) == (right != 0) ? 0.9 : 0.1;
      set->labels.push_back(y);
      set->probs.push_back(1 - p1);
      set->probs.push_back(p1);
    }
  }
  const BootstrapSettings bs{1000, 8, 0.95};
  const PairedComparison c = compare_paired(WeightedScorer(a.probs, a.labels, 2), WeightedScorer(b.probs, b.labels, 2), bs);
  ASSERT_EQ(c.only_a_correct, 6);
  ASSERT_EQ(c.only_b_correct, 2);
  const int64_t D = 4;
  int64_t as_extreme = 0, ties = 0;
  std::vector<int32_t> w;
  for (int64_t r = 0; r < bs.resamples; ++r) {
    bootstrap_weights(n, bs.seed, r, w);
    int64_t Db = 0;
    for (int64_t i = 0; i < n; ++i) Db += w[i] * (right_a[i] - right_b[i]);
    as_extreme += std::abs(Db - D) >= D ? 1 : 0;
    ties += Db == 2 * D ? 1 : 0;
  }
  EXPECT_GT(ties, 20);  // the case this test is about
  EXPECT_DOUBLE_EQ(c.accuracy.p, static_cast<double>(1 + as_extreme) / static_cast<double>(1 + bs.resamples));
  EXPECT_DOUBLE_EQ(c.accuracy.value, 4.0 / 48.0);
}

TEST(Resampling, PairedTestsHoldTheirLevelWhenSystemsAreEqual) {
  // 200 sets on which two systems are each right with probability 0.65, independently: both tests
  // should call about 5% of them significant at 0.05 (McNemar's exact test a little fewer).
  const int kSets = 200;
  int bootstrap_rejects = 0, mcnemar_rejects = 0, covered = 0;
  for (int t = 0; t < kSets; ++t) {
    const Set a = set_with_accuracy(200, 0.65, 1000 + static_cast<uint64_t>(t));
    Set b = a;
    Rng rng(5000 + static_cast<uint64_t>(t));
    for (size_t i = 0; i < b.labels.size(); ++i) {
      const bool right = rng.uniform() < 0.65;
      const double p1 = (b.labels[i] == 1) == right ? 0.7 : 0.3;
      b.probs[2 * i] = 1 - p1;
      b.probs[2 * i + 1] = p1;
    }
    const PairedComparison c = compare_paired(WeightedScorer(a.probs, a.labels, 2),
                                              WeightedScorer(b.probs, b.labels, 2),
                                              BootstrapSettings{200, static_cast<uint64_t>(t), 0.95});
    bootstrap_rejects += c.accuracy.p < 0.05 ? 1 : 0;
    mcnemar_rejects += c.mcnemar_p < 0.05 ? 1 : 0;
    covered += c.accuracy.ci.lo <= 0 && c.accuracy.ci.hi >= 0 ? 1 : 0;
  }
  std::printf("of %d equal pairs: bootstrap rejected %d, McNemar %d; the interval held 0 in %d\n", kSets,
              bootstrap_rejects, mcnemar_rejects, covered);
  // Binomial(200, 0.05): mean 10, sd 3.1.
  EXPECT_GE(bootstrap_rejects, 2);
  EXPECT_LE(bootstrap_rejects, 22);
  EXPECT_LE(mcnemar_rejects, 20);
  EXPECT_GE(covered, 178);  // the 95% interval holds the true difference, 0, about 190 times
  // Scored on different labels: refused.
  const Set a = set_with_accuracy(50, 0.65, 9);
  Set other = a;
  other.labels[0] = 1 - other.labels[0];
  EXPECT_THROW(compare_paired(WeightedScorer(a.probs, a.labels, 2), WeightedScorer(other.probs, other.labels, 2),
                              BootstrapSettings{10, 4, 0.95}),
               Error);
}

}  // namespace
}  // namespace smt
