// Tests of the synthetic claims generator: determinism, seed sensitivity, per-family balance,
// disjoint splits, long-context layout, and labels re-derived from the knowledge base or the
// evidence text with regular expressions written independently of the generator.
#include <gtest/gtest.h>

#include <cctype>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "core/error.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"

namespace smt {
namespace {

SyntheticConfig small_config(uint64_t seed) {
  SyntheticConfig c;
  c.seed = seed;
  c.num_train = 2048;
  c.num_heldout = 512;
  c.long_context_fraction = 0.1;
  c.long_context_chars = 1024;
  return c;
}

bool same_items(const std::vector<SyntheticItem>& a, const std::vector<SyntheticItem>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].evidence != b[i].evidence || a[i].claim != b[i].claim || a[i].is_true != b[i].is_true ||
        a[i].family != b[i].family || a[i].long_context != b[i].long_context ||
        a[i].evidence_chars != b[i].evidence_chars)
      return false;
  }
  return true;
}

TEST(SyntheticGenerator, DeterministicBySeed) {
  const auto cfg = small_config(7);
  EXPECT_TRUE(same_items(generate_synthetic(cfg, SyntheticSplit::kTrain), generate_synthetic(cfg, SyntheticSplit::kTrain)));
  EXPECT_TRUE(same_items(generate_synthetic(cfg, SyntheticSplit::kHeldout),
                         generate_synthetic(cfg, SyntheticSplit::kHeldout)));
  // Byte-identical JSONL as well.
  const auto dir = std::filesystem::temp_directory_path() / "smt_synthetic_test";
  std::filesystem::create_directories(dir);
  const auto items = generate_synthetic(cfg, SyntheticSplit::kTrain);
  write_synthetic_jsonl((dir / "a.jsonl").string(), items);
  write_synthetic_jsonl((dir / "b.jsonl").string(), generate_synthetic(cfg, SyntheticSplit::kTrain));
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string a = slurp(dir / "a.jsonl");
  EXPECT_EQ(a, slurp(dir / "b.jsonl"));
  EXPECT_EQ(static_cast<size_t>(std::count(a.begin(), a.end(), '\n')), items.size());
  EXPECT_NE(a.find("\"claim\":\""), std::string::npos);
  EXPECT_NE(a.find("\"is_true\":true"), std::string::npos);
  EXPECT_THROW(write_synthetic_jsonl((dir / "no_such_dir" / "x.jsonl").string(), items), Error);
  std::filesystem::remove_all(dir);
}

TEST(SyntheticGenerator, SeedSensitive) {
  const auto a = generate_synthetic(small_config(1), SyntheticSplit::kTrain);
  const auto b = generate_synthetic(small_config(2), SyntheticSplit::kTrain);
  ASSERT_EQ(a.size(), b.size());
  size_t differing = 0;
  for (size_t i = 0; i < a.size(); ++i) differing += (a[i].evidence != b[i].evidence || a[i].claim != b[i].claim);
  EXPECT_GT(differing, a.size() * 9 / 10);
  const auto ka = make_synthetic_kb(1), kb = make_synthetic_kb(2);
  EXPECT_NE(ka.countries, kb.countries);
}

TEST(SyntheticGenerator, BalancedPerFamilyInBothSplits) {
  const auto cfg = small_config(3);
  for (auto split : {SyntheticSplit::kTrain, SyntheticSplit::kHeldout}) {
    const auto items = generate_synthetic(cfg, split);
    ASSERT_EQ(static_cast<int64_t>(items.size()), split == SyntheticSplit::kTrain ? cfg.num_train : cfg.num_heldout);
    std::vector<int> total(8, 0), num_true(8, 0);
    for (const auto& it : items) {
      ASSERT_GE(it.family, 0);
      ASSERT_LT(it.family, 8);
      ++total[static_cast<size_t>(it.family)];
      num_true[static_cast<size_t>(it.family)] += it.is_true ? 1 : 0;
    }
    for (int f = 0; f < 8; ++f) {
      SCOPED_TRACE(kSyntheticFamilies[static_cast<size_t>(f)]);
      EXPECT_NEAR(total[static_cast<size_t>(f)], static_cast<double>(items.size()) / 8, items.size() * 0.02);
      const double frac = static_cast<double>(num_true[static_cast<size_t>(f)]) / total[static_cast<size_t>(f)];
      EXPECT_GE(frac, 0.4);
      EXPECT_LE(frac, 0.6);
    }
  }
}

TEST(SyntheticGenerator, SplitsAreDisjoint) {
  // Small vocabulary => collisions would be frequent without the check; use many items.
  SyntheticConfig cfg = small_config(5);
  cfg.num_train = 4096;
  cfg.num_heldout = 2048;
  const auto train = generate_synthetic(cfg, SyntheticSplit::kTrain);
  const auto held = generate_synthetic(cfg, SyntheticSplit::kHeldout);
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& it : train) seen.insert({it.evidence, it.claim});
  for (const auto& it : held) EXPECT_EQ(seen.count({it.evidence, it.claim}), 0u) << it.evidence << " | " << it.claim;
  // Held-out is not a copy of the train order (its own streams).
  size_t same_position = 0;
  for (size_t i = 0; i < held.size(); ++i) same_position += held[i].claim == train[i].claim;
  EXPECT_LT(same_position, held.size() / 10);
}

TEST(SyntheticGenerator, LongContextLayout) {
  const auto cfg = small_config(11);
  const auto items = generate_synthetic(cfg, SyntheticSplit::kTrain);
  int64_t num_long = 0;
  const std::regex day_re(R"(began on day (\d)\.)"), claim_re(R"(began (?:after|later than) the (\w+) day\.)");
  const std::vector<std::string> ordinals = {"first", "second", "third", "fourth", "fifth",
                                             "sixth", "seventh", "eighth", "ninth"};
  int checked_temporal = 0;
  for (const auto& it : items) {
    if (!it.long_context) {
      EXPECT_EQ(it.evidence_chars, static_cast<int64_t>(it.evidence.size()));
      continue;
    }
    ++num_long;
    ASSERT_GT(it.evidence_chars, 0) << "long-context items carry real evidence";
    // Bytes between the end of the evidence and the start of the claim (filler + SEP).
    const int64_t gap = static_cast<int64_t>(it.evidence.size()) - it.evidence_chars + 1;
    EXPECT_GE(gap, cfg.long_context_chars / 2);
    EXPECT_LE(gap, cfg.long_context_chars * 2);
    // The label depends on the early evidence: re-derive it for temporal items.
    if (kSyntheticFamilies[static_cast<size_t>(it.family)] == "temporal") {
      const std::string early = it.evidence.substr(0, static_cast<size_t>(it.evidence_chars));
      const std::string late = it.evidence.substr(static_cast<size_t>(it.evidence_chars));
      std::smatch e, c;
      ASSERT_TRUE(std::regex_search(early, e, day_re)) << early;
      EXPECT_FALSE(std::regex_search(late, day_re)) << "the filler holds no competing evidence";
      ASSERT_TRUE(std::regex_search(it.claim, c, claim_re)) << it.claim;
      const int day = std::stoi(e[1]);
      const auto ord = std::find(ordinals.begin(), ordinals.end(), c[1].str());
      ASSERT_NE(ord, ordinals.end()) << it.claim;
      const int bound = static_cast<int>(ord - ordinals.begin()) + 1;
      EXPECT_EQ(it.is_true, day > bound) << it.evidence_chars << ": " << it.claim;
      ++checked_temporal;
    }
  }
  EXPECT_NEAR(static_cast<double>(num_long) / static_cast<double>(items.size()), cfg.long_context_fraction, 0.03);
  EXPECT_GT(checked_temporal, 5);
  SyntheticConfig none = cfg;
  none.long_context_fraction = 0;
  for (const auto& it : generate_synthetic(none, SyntheticSplit::kTrain)) EXPECT_FALSE(it.long_context);
}

TEST(SyntheticGenerator, ShortItemsAreShort) {
  const auto items = generate_synthetic(small_config(13), SyntheticSplit::kTrain);
  int64_t num_short = 0, under_200 = 0;
  for (const auto& it : items) {
    if (it.long_context) continue;
    ++num_short;
    under_200 += it.evidence.size() + it.claim.size() + 3 < 200;
  }
  EXPECT_EQ(under_200, num_short);
}

int index_of(const std::vector<std::string>& v, const std::string& s) {
  const auto it = std::find(v.begin(), v.end(), s);
  return it == v.end() ? -1 : static_cast<int>(it - v.begin());
}

TEST(SyntheticLabels, FactualAndEntityAgreeWithKb) {
  const auto cfg = small_config(17);
  const auto kb = make_synthetic_kb(cfg.seed);
  ASSERT_EQ(kb.countries.size(), kb.capitals.size());
  ASSERT_EQ(kb.countries.size(), kb.leaders.size());
  ASSERT_EQ(kb.countries.size(), kb.old_city.size());
  ASSERT_EQ(kb.countries.size(), kb.elected.size());
  ASSERT_EQ(kb.rivers.size(), kb.mountains.size());
  std::set<std::string> names(kb.countries.begin(), kb.countries.end());
  names.insert(kb.capitals.begin(), kb.capitals.end());
  names.insert(kb.leaders.begin(), kb.leaders.end());
  names.insert(kb.rivers.begin(), kb.rivers.end());
  names.insert(kb.mountains.begin(), kb.mountains.end());
  EXPECT_EQ(names.size(), 3 * kb.countries.size() + 2 * kb.rivers.size()) << "all invented names are distinct";
  // The words of a claim, without punctuation, to find the KB names it mentions.
  auto words = [](const std::string& text) {
    std::set<std::string> w;
    std::string cur;
    for (char ch : text + " ") {
      if (std::isalnum(static_cast<unsigned char>(ch))) {
        cur += ch;
      } else if (!cur.empty()) {
        w.insert(cur);
        cur.clear();
      }
    }
    return w;
  };
  int factual = 0, entity = 0;
  for (auto split : {SyntheticSplit::kTrain, SyntheticSplit::kHeldout}) {
    for (const auto& it : generate_synthetic(cfg, split)) {
      const std::string& fam = kSyntheticFamilies[static_cast<size_t>(it.family)];
      const auto w = words(it.claim);
      if (fam == "factual") {
        EXPECT_TRUE(it.evidence.empty()) << "factual claims must be memorised";
        int found = 0;
        bool truth = false;
        for (size_t c = 0; c < kb.countries.size(); ++c) {
          if (w.count(kb.capitals[c])) { truth = kb.old_city[c] != 0; ++found; }
          if (w.count(kb.leaders[c])) { truth = kb.elected[c] != 0; ++found; }
        }
        ASSERT_EQ(found, 1) << "a factual claim names exactly one capital or leader: " << it.claim;
        EXPECT_EQ(truth, it.is_true) << it.claim;
        ++factual;
      } else if (fam == "entity") {
        int rivers = 0, mountains = 0;
        for (size_t r = 0; r < kb.rivers.size(); ++r) {
          rivers += static_cast<int>(w.count(kb.rivers[r]));
          mountains += static_cast<int>(w.count(kb.mountains[r]));
        }
        ASSERT_EQ(rivers + mountains, 1) << it.claim;
        EXPECT_EQ(it.is_true, rivers == 1) << it.claim;
        ++entity;
      }
    }
  }
  EXPECT_GT(factual, 20);
  EXPECT_GT(entity, 20);
}

TEST(SyntheticLabels, EvidenceFamiliesAgreeWithEvidence) {
  // Re-derive the label from the evidence for the families with a numeric rule.
  const auto cfg = small_config(19);
  const std::vector<std::string> number_words = {"one", "two", "three", "four", "five",
                                                 "six", "seven", "eight", "nine"};
  const std::regex num_e(R"(^(\w+) has (\d) (\w+)\.)"), num_c(R"(more than (\w+) (\w+))");
  const std::regex poll_e(R"((\d) (?:of|in) 10 people)");
  std::map<std::string, int> checked;
  for (const auto& it : generate_synthetic(cfg, SyntheticSplit::kTrain)) {
    const std::string& fam = kSyntheticFamilies[static_cast<size_t>(it.family)];
    const std::string ev = it.evidence.substr(0, static_cast<size_t>(it.evidence_chars));
    std::smatch e, c;
    if (fam == "numerical") {
      ASSERT_TRUE(std::regex_search(ev, e, num_e) && std::regex_search(it.claim, c, num_c)) << ev << " | " << it.claim;
      EXPECT_EQ(e[3], c[2]);
      const auto w = std::find(number_words.begin(), number_words.end(), c[1].str());
      ASSERT_NE(w, number_words.end()) << it.claim;
      const int count = std::stoi(e[2]), bound = static_cast<int>(w - number_words.begin()) + 1;
      EXPECT_EQ(it.is_true, count > bound) << ev << " | " << it.claim;
      ++checked[fam];
    } else if (fam == "opinion") {
      ASSERT_TRUE(std::regex_search(ev, e, poll_e)) << ev;
      EXPECT_EQ(it.is_true, std::stoi(e[1]) > 5) << ev << " | " << it.claim;
      ++checked[fam];
    }
  }
  EXPECT_GT(checked["numerical"], 100);
  EXPECT_GT(checked["opinion"], 100);
}

TEST(SyntheticDataset, TokensLabelsGroups) {
  auto items = generate_synthetic(small_config(23), SyntheticSplit::kHeldout);
  const Dataset d = make_synthetic_dataset(items, "synthetic:heldout");
  EXPECT_EQ(d.name, "synthetic:heldout");
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"false", "true"}));
  ASSERT_EQ(d.group_names.size(), 9u);
  EXPECT_EQ(d.group_names[8], "long_context");
  EXPECT_FALSE(d.leaking);
  ASSERT_EQ(d.examples.size(), items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& ex = d.examples[i];
    EXPECT_EQ(ex.label, items[i].is_true ? 1 : 0);
    EXPECT_EQ(ex.group, items[i].long_context ? 8 : items[i].family);
    EXPECT_EQ(decode_tokens(ex.tokens), "<bos>" + items[i].evidence + "<sep>" + items[i].claim + "<eos>");
  }
  EXPECT_NEAR(d.majority_accuracy(), 0.5, 0.01);
}

TEST(SyntheticGenerator, RejectsBadConfig) {
  SyntheticConfig c = small_config(1);
  c.long_context_fraction = 1.5;
  EXPECT_THROW(generate_synthetic(c, SyntheticSplit::kTrain), UsageError);
  c = small_config(1);
  c.num_train = -1;
  EXPECT_THROW(generate_synthetic(c, SyntheticSplit::kTrain), UsageError);
}

}  // namespace
}  // namespace smt
