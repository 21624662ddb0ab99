// Routing statistics of the evaluator against hand-computed cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "eval/routing_stats.h"

namespace smt {
namespace {

TEST(RoutingStats, LoadBalanceCoefficient) {
  EXPECT_DOUBLE_EQ(load_balance_coefficient({5, 5, 5, 5}, 1), 1.0);
  EXPECT_DOUBLE_EQ(load_balance_coefficient({20, 0, 0, 0}, 1), 0.0);   // mean/max = 1/4 = k/E
  EXPECT_DOUBLE_EQ(load_balance_coefficient({10, 10, 0, 0}, 1), 1.0 / 3);  // (1/2 - 1/4) / (3/4)
  EXPECT_DOUBLE_EQ(load_balance_coefficient({10, 10, 0, 0}, 2), 0.0);  // top-2: the most uneven possible
  EXPECT_DOUBLE_EQ(load_balance_coefficient({6, 2, 2, 2, 2, 2, 2, 2}, 2), (20.0 / 8 / 6 - 0.25) / 0.75);
  EXPECT_EQ(load_balance_coefficient({3, 3}, 2), -1);  // E = k: undefined
  EXPECT_EQ(load_balance_coefficient({0, 0, 0}, 1), -1);
  EXPECT_THROW(load_balance_coefficient({1, -1, 0}, 1), Error);
}

TEST(RoutingStats, EntropyBits) {
  EXPECT_DOUBLE_EQ(entropy_bits({1, 1, 1, 1}), 2.0);
  EXPECT_DOUBLE_EQ(entropy_bits({7, 0}), 0.0);
  EXPECT_DOUBLE_EQ(entropy_bits({1, 1, 2}), 1.5);
  EXPECT_DOUBLE_EQ(entropy_bits({}), 0.0);
}

TEST(RoutingStats, SpecialisationHandCases) {
  // Each class always in its own expert: I = H(E) = 1 bit.
  EXPECT_DOUBLE_EQ(specialisation({4, 0, 0, 4, 2, 0}, 2, {0, 1, 0}, 2), 1.0);
  // Every example spread evenly: no information.
  EXPECT_DOUBLE_EQ(specialisation({1, 1, 3, 3, 2, 2}, 2, {0, 1, 1}, 2), 0.0);
  // Joint [[3,1],[1,3]] / 8: H(E) = 1, I = 1 - H(3/4) = 0.188721875540867.
  EXPECT_NEAR(specialisation({3, 1, 1, 3}, 2, {0, 1}, 2), 1.0 - (-(0.75 * std::log2(0.75) + 0.25 * std::log2(0.25))),
              1e-12);
  // A class that never occurs changes nothing; one expert used: H(E) = 0 -> 0.
  EXPECT_NEAR(specialisation({3, 1, 1, 3}, 2, {0, 2}, 3), specialisation({3, 1, 1, 3}, 2, {0, 1}, 2), 1e-12);
  EXPECT_EQ(specialisation({5, 0, 2, 0}, 2, {0, 1}, 2), 0.0);
  EXPECT_EQ(specialisation({}, 4, {}, 2), 0.0);
  EXPECT_THROW(specialisation({1, 2, 3}, 2, {0, 1}, 2), Error);
  EXPECT_THROW(specialisation({1, 2}, 2, {3}, 2), Error);
}

TEST(RoutingStats, ShuffledLabelsArePermutationAndDeterministic) {
  std::vector<int32_t> labels(200);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int32_t>(i % 3);
  const auto a = shuffled_labels(labels, 7), b = shuffled_labels(labels, 7), c = shuffled_labels(labels, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, labels);
  auto sa = a, sl = labels;
  std::sort(sa.begin(), sa.end());
  std::sort(sl.begin(), sl.end());
  EXPECT_EQ(sa, sl);
}

TEST(RoutingStats, LayerStatsShuffledBaselineIsLowForPerfectRouting) {
  // 100 examples, class = i % 2, class 0 routed to experts {0,1}, class 1 to {2,3}: specialisation
  // 1/2 (I = 1 bit, H(E) = 2 bits); shuffled labels break most of it.
  const int n = 100, E = 4;
  std::vector<int64_t> counts(n * E, 0);
  std::vector<int32_t> labels(n);
  for (int i = 0; i < n; ++i) {
    labels[i] = i % 2;
    counts[i * E + 2 * labels[i]] = 3;
    counts[i * E + 2 * labels[i] + 1] = 3;
  }
  const auto s = layer_routing_stats(1, true, E, 2, counts, labels, 2);
  EXPECT_EQ(s.layer, 1);
  EXPECT_EQ(s.tokens_per_expert, (std::vector<int64_t>{150, 150, 150, 150}));
  EXPECT_DOUBLE_EQ(s.load_balance, 1.0);
  EXPECT_DOUBLE_EQ(s.entropy, 2.0);
  EXPECT_DOUBLE_EQ(s.entropy_normalized, 1.0);
  EXPECT_NEAR(s.specialisation, 0.5, 1e-12);
  EXPECT_LT(s.specialisation_shuffled, 0.1);
  EXPECT_DOUBLE_EQ(s.specialisation_shuffled,
                   specialisation(counts, E, shuffled_labels(labels, kShuffleSeed), 2));
}

}  // namespace
}  // namespace smt
