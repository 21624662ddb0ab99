// Tests of the synthetic claims generator: determinism, seed sensitivity, per-family balance,
// disjoint splits, long-context layout, and labels re-derived from the knowledge base or from the
// evidence text with regular expressions written here, independently of the generator.
#include <gtest/gtest.h>

#include <algorithm>
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

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const std::string& family_name(const SyntheticItem& it) { return kSyntheticFamilies[static_cast<size_t>(it.family)]; }
// The real evidence of an item (without the filler of long-context items).
std::string real_evidence(const SyntheticItem& it) { return it.evidence.substr(0, static_cast<size_t>(it.evidence_chars)); }

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
  const std::string a = slurp(dir / "a.jsonl");
  EXPECT_EQ(a, slurp(dir / "b.jsonl"));
  EXPECT_EQ(static_cast<size_t>(std::count(a.begin(), a.end(), '\n')), items.size());
  EXPECT_THROW(write_synthetic_jsonl((dir / "no_such_dir" / "x.jsonl").string(), items), Error);
  std::filesystem::remove_all(dir);
}

TEST(SyntheticGenerator, JsonlEscaping) {
  const auto dir = std::filesystem::temp_directory_path() / "smt_synthetic_jsonl";
  std::filesystem::create_directories(dir);
  SyntheticItem it;
  it.evidence = "say \"hi\"\\ \n\t\x01";
  it.claim = "ok";
  it.is_true = true;
  it.family = 3;
  write_synthetic_jsonl((dir / "x.jsonl").string(), {it});
  EXPECT_EQ(slurp(dir / "x.jsonl"),
            "{\"family\":\"temporal\",\"is_true\":true,\"long_context\":false,"
            "\"evidence\":\"say \\\"hi\\\"\\\\ \\n\\t\\u0001\",\"claim\":\"ok\"}\n");
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
  EXPECT_NE(ka.capitals, kb.capitals);
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
  // The vocabulary is small on purpose, so a random split would share many items.
  SyntheticConfig cfg = small_config(5);
  cfg.num_train = 20000;
  cfg.num_heldout = 4000;
  const auto train = generate_synthetic(cfg, SyntheticSplit::kTrain);
  const auto held = generate_synthetic(cfg, SyntheticSplit::kHeldout);
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& it : train) seen.insert({it.evidence, it.claim});
  for (const auto& it : held) EXPECT_EQ(seen.count({it.evidence, it.claim}), 0u) << it.evidence << " | " << it.claim;
  // Duplicates inside one split do occur (small vocabulary), so disjointness is not an accident
  // of every item being unique.
  EXPECT_LT(seen.size(), train.size());
  // The held-out split does not depend on the size of the train split.
  SyntheticConfig fewer = cfg;
  fewer.num_train = 10;
  EXPECT_TRUE(same_items(held, generate_synthetic(fewer, SyntheticSplit::kHeldout)));
}

TEST(SyntheticGenerator, HeldoutFactsAreKnownFacts) {
  // Memorised families test new sentences about facts that the train split states too.
  const auto cfg = small_config(29);
  const auto kb = make_synthetic_kb(cfg.seed);
  auto capitals_in = [&](SyntheticSplit split) {
    std::set<std::string> out;
    for (const auto& it : generate_synthetic(cfg, split)) {
      if (family_name(it) != "factual") continue;
      for (const auto& c : kb.capitals)
        if (it.claim.find(c) != std::string::npos) out.insert(c);
    }
    return out;
  };
  const auto train = capitals_in(SyntheticSplit::kTrain), held = capitals_in(SyntheticSplit::kHeldout);
  EXPECT_EQ(train.size(), kb.capitals.size());
  for (const auto& c : held) EXPECT_EQ(train.count(c), 1u) << c;
}

TEST(SyntheticGenerator, LongContextLayout) {
  const auto cfg = small_config(11);
  const auto items = generate_synthetic(cfg, SyntheticSplit::kTrain);
  int64_t num_long = 0;
  const std::regex day_re(R"(began on day (\d)\.)"), claim_re(R"(began (?:after|later than) the (\w+) day\.)");
  const std::vector<std::string> ordinals = {"first", "second", "third",   "fourth", "fifth",
                                             "sixth", "seventh", "eighth", "ninth"};
  std::set<std::string> long_families;
  int checked_temporal = 0;
  for (const auto& it : items) {
    if (!it.long_context) {
      EXPECT_EQ(it.evidence_chars, static_cast<int64_t>(it.evidence.size()));
      continue;
    }
    ++num_long;
    long_families.insert(family_name(it));
    ASSERT_GT(it.evidence_chars, 0) << "long-context items carry real evidence";
    // Bytes between the end of the evidence and the start of the claim (filler + SEP).
    const int64_t gap = static_cast<int64_t>(it.evidence.size()) - it.evidence_chars + 1;
    EXPECT_GE(gap, cfg.long_context_chars / 2);
    EXPECT_LE(gap, cfg.long_context_chars * 2);
    // The label depends on the early evidence: re-derive it for temporal items.
    if (family_name(it) == "temporal") {
      const std::string early = real_evidence(it);
      const std::string late = it.evidence.substr(static_cast<size_t>(it.evidence_chars));
      std::smatch e, c;
      ASSERT_TRUE(std::regex_search(early, e, day_re)) << early;
      EXPECT_EQ(std::count_if(late.begin(), late.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); }),
                0)
          << "the filler holds no competing numbers";
      ASSERT_TRUE(std::regex_search(it.claim, c, claim_re)) << it.claim;
      const int day = std::stoi(e[1]);
      const int bound = static_cast<int>(std::find(ordinals.begin(), ordinals.end(), c[1].str()) - ordinals.begin()) + 1;
      EXPECT_EQ(it.is_true, day > bound) << early << " | " << it.claim;
      ++checked_temporal;
    }
  }
  EXPECT_NEAR(static_cast<double>(num_long) / static_cast<double>(items.size()), cfg.long_context_fraction, 0.03);
  EXPECT_GT(checked_temporal, 5);
  // Only families with evidence get filler (a memorised fact has nothing to put before it).
  EXPECT_EQ(long_families.count("factual"), 0u);
  EXPECT_EQ(long_families.count("entity"), 0u);
  EXPECT_GE(long_families.size(), 4u);
  SyntheticConfig none = cfg;
  none.long_context_fraction = 0;
  for (const auto& it : generate_synthetic(none, SyntheticSplit::kTrain)) EXPECT_FALSE(it.long_context);
}

TEST(SyntheticGenerator, ShortItemsAreShort) {
  // Learnability by a small byte-level model in a few hundred steps needs short texts.
  const auto items = generate_synthetic(small_config(13), SyntheticSplit::kTrain);
  int64_t num_short = 0, total_bytes = 0;
  for (const auto& it : items) {
    if (it.long_context) continue;
    ++num_short;
    const int64_t bytes = static_cast<int64_t>(it.evidence.size() + it.claim.size());
    EXPECT_LT(bytes, 200) << it.evidence << " | " << it.claim;
    total_bytes += bytes;
  }
  EXPECT_LT(total_bytes / num_short, 100);
}

int count_names(const std::string& text, const std::vector<std::string>& names) {
  // Whole-word occurrences of any of the names.
  int n = 0;
  for (const auto& name : names) {
    const std::regex re("\\b" + name + "\\b");
    n += static_cast<int>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
  }
  return n;
}

TEST(SyntheticLabels, MemorisedFamiliesAgreeWithKb) {
  const auto cfg = small_config(17);
  const auto kb = make_synthetic_kb(cfg.seed);
  ASSERT_EQ(kb.countries.size(), kb.capitals.size());
  ASSERT_EQ(kb.countries.size(), kb.old_city.size());
  ASSERT_EQ(kb.rivers.size(), kb.mountains.size());
  std::set<std::string> names(kb.countries.begin(), kb.countries.end());
  names.insert(kb.capitals.begin(), kb.capitals.end());
  names.insert(kb.rivers.begin(), kb.rivers.end());
  names.insert(kb.mountains.begin(), kb.mountains.end());
  EXPECT_EQ(names.size(), 2 * kb.countries.size() + 2 * kb.rivers.size()) << "all invented names are distinct";
  const auto num_old = std::count(kb.old_city.begin(), kb.old_city.end(), 1);
  EXPECT_EQ(num_old * 2, static_cast<int64_t>(kb.old_city.size()));

  // Cause -> effect pairs of the generator's world (its specification, restated here).
  const std::map<std::string, std::string> effect_of = {
      {"heavy rain", "floods"},           {"a long drought", "a poor harvest"}, {"a rail strike", "empty stations"},
      {"a big festival", "full hotels"},  {"a forest fire", "smoky skies"},     {"a storm at sea", "cancelled ferries"}};
  std::map<std::string, int> checked;
  for (auto split : {SyntheticSplit::kTrain, SyntheticSplit::kHeldout}) {
    for (const auto& it : generate_synthetic(cfg, split)) {
      const std::string& fam = family_name(it);
      if (fam == "factual") {
        EXPECT_TRUE(it.evidence.empty()) << "factual claims must be memorised";
        int found = 0;
        bool truth = false;
        for (size_t c = 0; c < kb.capitals.size(); ++c) {
          if (count_names(it.claim, {kb.capitals[c]}) > 0) {
            truth = kb.old_city[c] != 0;
            ++found;
          }
        }
        ASSERT_EQ(found, 1) << "a factual claim names exactly one capital: " << it.claim;
        EXPECT_EQ(truth, it.is_true) << it.claim;
        ++checked[fam];
      } else if (fam == "entity") {
        EXPECT_TRUE(it.evidence.empty());
        const int rivers = count_names(it.claim, kb.rivers), mountains = count_names(it.claim, kb.mountains);
        ASSERT_EQ(rivers + mountains, 1) << it.claim;
        EXPECT_EQ(it.is_true, rivers == 1) << it.claim;
        ++checked[fam];
      } else if (fam == "causal") {
        std::string claim = it.claim, cause, effect;
        std::transform(claim.begin(), claim.end(), claim.begin(), [](unsigned char ch) { return std::tolower(ch); });
        for (const auto& [c, e] : effect_of) {
          if (claim.find(c) != std::string::npos) cause = c;
          if (claim.find(e) != std::string::npos) effect = e;
        }
        ASSERT_FALSE(effect.empty()) << it.claim;
        const bool superstition = claim.find("lucky") != std::string::npos;
        ASSERT_NE(superstition, !cause.empty()) << "either a real cause or a superstition: " << it.claim;
        EXPECT_EQ(it.is_true, !superstition && effect_of.at(cause) == effect) << it.claim;
        ++checked[fam];
      }
    }
  }
  EXPECT_GT(checked["factual"], 200);
  EXPECT_GT(checked["entity"], 200);
  EXPECT_GT(checked["causal"], 200);
}

TEST(SyntheticLabels, EvidenceFamiliesAgreeWithEvidence) {
  const auto cfg = small_config(19);
  const std::vector<std::string> number_words = {"one", "two", "three", "four", "five",
                                                 "six", "seven", "eight", "nine"};
  const std::vector<std::string> ordinals = {"first", "second", "third",   "fourth", "fifth",
                                             "sixth", "seventh", "eighth", "ninth"};
  auto index_in = [](const std::vector<std::string>& v, const std::string& s) {
    const auto it = std::find(v.begin(), v.end(), s);
    return it == v.end() ? -1 : static_cast<int>(it - v.begin()) + 1;
  };
  const std::regex num_e(R"(^(\w+) has (\d) (\w+)\.$)"), num_c(R"(more than (\w+) (\w+))");
  const std::regex poll_e(R"(\b(\d) (?:of|in) 10 people)");
  const std::regex day_e(R"(began on day (\d)\.$)"), day_c(R"(began (?:after|later than) the (\w+) day\.$)");
  const std::regex neg_e(R"(^The (\w+) in (\w+) (is|isn't) (\w+)\.$)"), neg_c(R"(^The (\w+) (is|isn't) (\w+)\.$)");
  const std::regex copy_e(R"((gate|platform|stop|bay) ([A-Z])\.$)"), copy_c(R"((gate|platform|stop|bay) ([A-Z])\.$)");
  const std::regex notice_e(R"(\b(ON TIME|RUNNING|BOARDING|CANCELLED|SUSPENDED|CALLED OFF)\b)");
  std::map<std::string, int> checked;
  for (auto split : {SyntheticSplit::kTrain, SyntheticSplit::kHeldout}) {
    for (const auto& it : generate_synthetic(cfg, split)) {
      const std::string& fam = family_name(it);
      const std::string ev = real_evidence(it);
      std::smatch e, c;
      if (fam == "numerical") {
        ASSERT_TRUE(std::regex_search(ev, e, num_e) && std::regex_search(it.claim, c, num_c)) << ev << " | " << it.claim;
        EXPECT_EQ(e[3], c[2]);
        const int bound = index_in(number_words, c[1]);
        ASSERT_GT(bound, 0) << it.claim;
        EXPECT_EQ(it.is_true, std::stoi(e[2]) > bound) << ev << " | " << it.claim;
        ++checked[fam];
      } else if (fam == "opinion") {
        ASSERT_TRUE(std::regex_search(ev, e, poll_e)) << ev;
        EXPECT_EQ(it.is_true, std::stoi(e[1]) > 5) << ev << " | " << it.claim;
        ++checked[fam];
      } else if (fam == "temporal") {
        ASSERT_TRUE(std::regex_search(ev, e, day_e) && std::regex_search(it.claim, c, day_c)) << ev << " | " << it.claim;
        const int bound = index_in(ordinals, c[1]);
        ASSERT_GT(bound, 0) << it.claim;
        EXPECT_EQ(it.is_true, std::stoi(e[1]) > bound) << ev << " | " << it.claim;
        ++checked[fam];
      } else if (fam == "contradiction") {
        ASSERT_TRUE(std::regex_search(ev, e, neg_e) && std::regex_search(it.claim, c, neg_c)) << ev << " | " << it.claim;
        EXPECT_EQ(e[1], c[1]);  // same place
        EXPECT_EQ(e[4], c[3]);  // same state
        EXPECT_EQ(it.is_true, e[3] == c[2]) << ev << " | " << it.claim;
        ++checked[fam];
      } else if (fam == "context") {
        if (std::regex_search(ev, e, copy_e)) {
          ASSERT_TRUE(std::regex_search(it.claim, c, copy_c)) << it.claim;
          EXPECT_EQ(e[1], c[1]);
          EXPECT_EQ(it.is_true, e[2] == c[2]) << ev << " | " << it.claim;
          ++checked["context:copy"];
        } else {
          ASSERT_TRUE(std::regex_search(ev, e, notice_e)) << ev;
          const std::string w = e[1];
          EXPECT_EQ(it.is_true, w == "ON TIME" || w == "RUNNING" || w == "BOARDING") << ev << " | " << it.claim;
          ++checked["context:notice"];
        }
      }
    }
  }
  for (const char* fam : {"numerical", "opinion", "temporal", "contradiction"}) EXPECT_GT(checked[fam], 200) << fam;
  EXPECT_GT(checked["context:copy"], 100);
  EXPECT_GT(checked["context:notice"], 100);
}

TEST(SyntheticDataset, TokensLabelsGroups) {
  auto items = generate_synthetic(small_config(23), SyntheticSplit::kHeldout);
  const Dataset d = make_synthetic_dataset(items, "synthetic:heldout");
  EXPECT_EQ(d.name, "synthetic:heldout");
  EXPECT_EQ(d.class_names, (std::vector<std::string>{"false", "true"}));
  ASSERT_EQ(d.group_names.size(), 9u);
  EXPECT_EQ(d.group_names[0], "factual");
  EXPECT_EQ(d.group_names[8], "long_context");
  EXPECT_FALSE(d.leaking);
  ASSERT_EQ(d.examples.size(), items.size());
  int num_long = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& ex = d.examples[i];
    EXPECT_EQ(ex.label, items[i].is_true ? 1 : 0);
    EXPECT_EQ(ex.group, items[i].long_context ? 8 : items[i].family);
    num_long += ex.group == 8;
    EXPECT_EQ(decode_tokens(ex.tokens), "<bos>" + items[i].evidence + "<sep>" + items[i].claim + "<eos>");
  }
  EXPECT_GT(num_long, 0);
  EXPECT_NEAR(d.majority_accuracy(), 0.5, 0.01);
}

TEST(SyntheticGenerator, RejectsBadConfig) {
  SyntheticConfig c = small_config(1);
  c.long_context_fraction = 1.5;
  EXPECT_THROW(generate_synthetic(c, SyntheticSplit::kTrain), UsageError);
  c = small_config(1);
  c.num_train = -1;
  EXPECT_THROW(generate_synthetic(c, SyntheticSplit::kTrain), UsageError);
  c = small_config(1);
  c.long_context_chars = -5;
  EXPECT_THROW(generate_synthetic(c, SyntheticSplit::kHeldout), UsageError);
}

}  // namespace
}  // namespace smt
