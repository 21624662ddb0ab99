// The hashed n-gram logistic-regression baseline: features, learning a separable toy set,
// determinism.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "eval/baseline_ngram.h"

namespace smt {
namespace {

// label c's examples contain the cue word cues[c] among random filler words shared by all classes.
Dataset toy_set(uint64_t seed, int n, const std::vector<std::string>& cues) {
  const std::vector<std::string> filler = {"the", "report", "said", "minister", "city", "budget", "river",
                                           "often", "claims", "that", "new", "law", "vote", "people"};
  Dataset d;
  d.name = "toy";
  for (size_t c = 0; c < cues.size(); ++c) d.class_names.push_back("c" + std::to_string(c));
  Rng rng(seed, 3);
  for (int i = 0; i < n; ++i) {
    const auto label = static_cast<int32_t>(i % cues.size());
    std::string text;
    const int len = 4 + static_cast<int>(rng.below(6));
    const int cue_at = static_cast<int>(rng.below(static_cast<uint64_t>(len)));
    for (int w = 0; w < len; ++w) {
      if (w) text += ' ';
      text += w == cue_at ? cues[static_cast<size_t>(label)] : filler[rng.below(filler.size())];
    }
    Example e;
    e.tokens = encode_fields({text, "speaker"});
    e.label = label;
    d.examples.push_back(e);
  }
  return d;
}

double accuracy(const std::vector<double>& probs, const Dataset& d) {
  const size_t C = static_cast<size_t>(d.num_classes());
  int hits = 0;
  for (size_t i = 0; i < d.examples.size(); ++i) {
    size_t best = 0;
    for (size_t c = 1; c < C; ++c)
      if (probs[i * C + c] > probs[i * C + best]) best = c;
    hits += static_cast<int32_t>(best) == d.examples[i].label;
  }
  return static_cast<double>(hits) / static_cast<double>(d.examples.size());
}

TEST(NgramFeatures, TextHashingAndNormalisation) {
  Example e;
  e.tokens = encode_fields({"Hello world", "x"});
  EXPECT_EQ(example_text(e), "Hello world\nx");
  NgramBaselineConfig cfg;
  const SparseRow a = ngram_features("Hello world", cfg), b = ngram_features("hello WORLD", cfg);
  EXPECT_EQ(a.idx, b.idx);  // lower-cased
  EXPECT_EQ(a.val, b.val);
  double norm2 = 0;
  for (size_t i = 0; i < a.idx.size(); ++i) {
    norm2 += static_cast<double>(a.val[i]) * a.val[i];
    EXPECT_LT(a.idx[i], 1u << cfg.hash_bits);
    if (i) EXPECT_LT(a.idx[i - 1], a.idx[i]);  // ascending, unique
  }
  EXPECT_NEAR(norm2, 1.0, 1e-6);
  // 2 words + 1 bigram + char grams: 11 bytes -> 9 + 8 + 7 = 24; 27 features before collisions.
  EXPECT_GE(a.idx.size(), 20u);
  EXPECT_LE(a.idx.size(), 27u);
  EXPECT_NE(ngram_features("hello there", cfg).idx, a.idx);
  EXPECT_TRUE(ngram_features("", cfg).idx.empty());
  cfg.hash_bits = 2;
  EXPECT_THROW(ngram_features("x", cfg), Error);
}

TEST(NgramBaseline, LearnsSeparableToySetAndGeneralises) {
  const Dataset train = toy_set(1, 120, {"alpha", "omega", "zebra"});
  const Dataset test = toy_set(2, 60, {"alpha", "omega", "zebra"});
  NgramLogisticRegression lr;
  lr.fit(train);
  EXPECT_EQ(lr.num_classes(), 3);
  EXPECT_GT(lr.iterations(), 1);
  EXPECT_LT(lr.final_loss(), 0.5 * std::log(3.0));
  EXPECT_EQ(accuracy(lr.predict_proba(train), train), 1.0);
  EXPECT_EQ(accuracy(lr.predict_proba(test), test), 1.0);
  const auto p = lr.predict_proba(test);
  for (size_t i = 0; i < test.examples.size(); ++i)
    EXPECT_NEAR(p[3 * i] + p[3 * i + 1] + p[3 * i + 2], 1.0, 1e-12);
}

TEST(NgramBaseline, ShuffledLabelsAreNotLearnedOnHeldOut) {
  // Same texts, labels independent of the cue: held-out accuracy stays near chance.
  Dataset train = toy_set(1, 200, {"alpha", "omega"});
  Dataset test = toy_set(2, 200, {"alpha", "omega"});
  Rng rng(5, 0);
  for (auto* d : {&train, &test})
    for (auto& e : d->examples) e.label = static_cast<int32_t>(rng.below(2));
  NgramLogisticRegression lr;
  lr.fit(train);
  EXPECT_LT(accuracy(lr.predict_proba(test), test), 0.65);
}

TEST(NgramBaseline, Deterministic) {
  const Dataset train = toy_set(4, 90, {"alpha", "omega"});
  NgramLogisticRegression a, b;
  a.fit(train);
  b.fit(train);
  EXPECT_EQ(a.iterations(), b.iterations());
  EXPECT_EQ(a.weights(), b.weights());  // bit-identical
  EXPECT_EQ(a.predict_proba(train), b.predict_proba(train));
}

TEST(NgramBaseline, RejectsBadInput) {
  NgramLogisticRegression lr;
  EXPECT_THROW(lr.predict_proba(std::vector<SparseRow>{}), Error);
  EXPECT_THROW(lr.fit({SparseRow{}}, {0}, 1), Error);
  EXPECT_THROW(lr.fit({SparseRow{}}, {2}, 2), Error);
  EXPECT_THROW(lr.fit({}, {}, 2), Error);
}

}  // namespace
}  // namespace smt
