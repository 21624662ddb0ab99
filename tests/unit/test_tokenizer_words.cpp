// Tests of the hashed word tokenizer (data.tokenizer = words): splitting, lower-casing,
// determinism, the hash range and its FNV-1a definition, the shared specials, config checks,
// the LIAR fixture encoded with words, and a model whose vocabulary follows model.vocab_size.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/liar.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/param_layout.h"

namespace smt {
namespace {

const std::string kFixtures = std::string(SMT_SOURCE_DIR) + "/tests/fixtures/liar";
constexpr int32_t kV = 8192;

TEST(WordTokenizer, SplitsWordsPunctuationAndNumbers) {
  const std::vector<std::string> expected = {"says", "the", "u", ".", "s", ".", "spent", "$", "1.5", "billion", ",",
                                             "10,000", "jobs", "!", "in", "2010", "."};
  EXPECT_EQ(split_words("Says the U.S. spent $1.5 billion, 10,000 jobs!\tin 2010."), expected);
  // Whitespace and control bytes only separate; nothing else is dropped.
  EXPECT_EQ(split_words("  a\t\tb\r\nc \x01 d"), (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_TRUE(split_words("").empty());
  EXPECT_TRUE(split_words(" \t\n").empty());
  // A separator between digits only joins when digits follow; hyphens and apostrophes split.
  EXPECT_EQ(split_words("1, 2 x.5 obama-care don't"),
            (std::vector<std::string>{"1", ",", "2", "x", ".", "5", "obama", "-", "care", "don", "'", "t"}));
  // UTF-8 bytes stay inside the word (only ASCII is lower-cased).
  EXPECT_EQ(split_words("Caf\xc3\xa9 OK"), (std::vector<std::string>{"caf\xc3\xa9", "ok"}));
}

TEST(WordTokenizer, LowerCaseAndDeterministic) {
  const auto a = encode_words("Barack OBAMA said", kV);
  const auto b = encode_words("barack obama SAID", kV);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, encode_words("Barack OBAMA said", kV));
  ASSERT_EQ(a.size(), 3u);
  EXPECT_NE(a[0], a[1]);
}

TEST(WordTokenizer, PunctuationKeepsItsByteAndWordsHashAboveTheSpecials) {
  EXPECT_EQ(word_piece_id(",", kV), static_cast<int32_t>(','));
  EXPECT_EQ(word_piece_id("$", kV), static_cast<int32_t>('$'));
  // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector), so "a" lands here:
  const uint64_t fnv_a = 0xaf63dc4c8601ec8cull;
  EXPECT_EQ(word_piece_id("a", kV), kVocabSize + static_cast<int32_t>(fnv_a % static_cast<uint64_t>(kV - kVocabSize)));
  // FNV-1a 64 of "foobar" is 0x85944171f73967e8 (same test-vector table).
  EXPECT_EQ(word_piece_id("foobar", 1024),
            kVocabSize + static_cast<int32_t>(0x85944171f73967e8ull % static_cast<uint64_t>(1024 - kVocabSize)));
  EXPECT_THROW(word_piece_id("x", kVocabSize), Error);
  EXPECT_THROW(word_piece_id("", kV), Error);
}

TEST(WordTokenizer, HashRangeAndSpread) {
  for (int32_t V : {1024, 8192, 16384}) {
    std::set<int32_t> used;
    for (int i = 0; i < 2000; ++i) {
      const std::string w = "w" + std::to_string(i * 7919);
      const int32_t id = word_piece_id(w, V);
      ASSERT_GE(id, kVocabSize) << w;
      ASSERT_LT(id, V) << w;
      used.insert(id);
    }
    // 2000 words into (V - 260) buckets: a uniform hash fills most of the expected distinct count.
    const double buckets = V - kVocabSize;
    const double expected_distinct = buckets * (1.0 - std::pow(1.0 - 1.0 / buckets, 2000.0));
    EXPECT_GT(static_cast<double>(used.size()), 0.9 * expected_distinct) << V;
  }
}

TEST(WordTokenizer, FieldsUseTheSharedSpecials) {
  const Tokenizer words = make_tokenizer("words", kV);
  const auto ids = encode_fields({"Hello, world", "", "speaker: jane-doe"}, words);
  ASSERT_EQ(ids.size(), 12u);  // BOS hello , world SEP SEP speaker : jane - doe EOS
  EXPECT_EQ(ids.front(), kBosToken);
  EXPECT_EQ(ids.back(), kEosToken);
  EXPECT_EQ(ids[4], kSepToken);
  EXPECT_EQ(ids[5], kSepToken);
  EXPECT_EQ(ids[2], static_cast<int32_t>(','));
  EXPECT_EQ(ids[7], static_cast<int32_t>(':'));
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_GE(ids[i], 0);
    EXPECT_LT(ids[i], kV);
    if (i != 0 && i != 4 && i != 5 && i + 1 != ids.size()) EXPECT_NE(ids[i], kPadToken);
  }
  EXPECT_EQ(encode_fields({}, words), (std::vector<int32_t>{kBosToken, kEosToken}));
  // The byte tokenizer is the default and unchanged.
  EXPECT_EQ(encode_fields({"ab"}, Tokenizer{}), encode_fields({"ab"}));
}

TEST(WordTokenizer, ConfigChecks) {
  EXPECT_EQ(parse_tokenizer_kind("bytes"), TokenizerKind::kBytes);
  EXPECT_EQ(parse_tokenizer_kind("words"), TokenizerKind::kWords);
  EXPECT_THROW(parse_tokenizer_kind("Words"), UsageError);
  EXPECT_THROW(make_tokenizer("bytes", 8192), UsageError);
  EXPECT_THROW(make_tokenizer("words", kVocabSize), UsageError);
  EXPECT_THROW(make_tokenizer("words", kMinWordVocabSize - 1), UsageError);
  EXPECT_EQ(make_tokenizer("words", kMinWordVocabSize).vocab_size, kMinWordVocabSize);
  try {
    load_run_config_text("[data]\ntokenizer = words\n");
    FAIL() << "words with the byte vocabulary accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.vocab_size"), std::string::npos) << e.what();
  }
  const RunConfig c = load_run_config_text("[model]\nvocab_size = 16384\n[data]\ntokenizer = words\n");
  const RunConfig back = load_run_config_text(c.to_ini());
  EXPECT_EQ(back.model.vocab_size, 16384);
  EXPECT_EQ(back.data.tokenizer, "words");
  EXPECT_EQ(RunConfig{}.data.tokenizer, "bytes");
  EXPECT_EQ(RunConfig{}.model.vocab_size, kVocabSize);
}

TEST(WordTokenizer, LayoutFollowsVocabSize) {
  ModelConfig m;
  m.num_classes = 6;
  EXPECT_EQ(ParamLayout(m).at("embedding").shape, (std::vector<int64_t>{kVocabSize, m.d_model}));
  m.vocab_size = 4096;
  EXPECT_EQ(ParamLayout(m).at("embedding").shape, (std::vector<int64_t>{4096, m.d_model}));
}

TEST(WordTokenizer, LiarFixtureWithWords) {
  const auto records = read_liar_tsv(kFixtures + "/good.tsv");
  const Tokenizer words = make_tokenizer("words", kV);
  const Dataset bytes = make_liar_dataset(records, parse_liar_fields("statement+metadata"), false, "b");
  const Dataset w = make_liar_dataset(records, parse_liar_fields("statement+metadata"), false, "w", words);
  ASSERT_EQ(w.examples.size(), bytes.examples.size());
  for (size_t i = 0; i < w.examples.size(); ++i) {
    const auto& t = w.examples[i].tokens;
    EXPECT_EQ(w.examples[i].label, bytes.examples[i].label);
    EXPECT_LT(t.size(), bytes.examples[i].tokens.size());
    size_t seps = 0;
    for (int32_t id : t) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, kV);
      seps += id == kSepToken ? 1 : 0;
    }
    EXPECT_EQ(seps, 6u);  // statement + 6 metadata fields, as with bytes
  }
  // The first statement, word by word: BOS then its pieces.
  const auto& t0 = w.examples[0].tokens;
  const auto pieces = split_words(records[0].statement);
  ASSERT_GT(t0.size(), pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) EXPECT_EQ(t0[i + 1], word_piece_id(pieces[i], kV)) << pieces[i];
  EXPECT_EQ(t0[pieces.size() + 1], kSepToken);
}

}  // namespace
}  // namespace smt
