// Synthetic claims: true/false claims about a hidden knowledge base drawn from the seed, in
// eight families (one per expert name of the original prototype). Deterministic by seed;
// train and held-out splits never share an item. Must be learnable by a small model.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"

namespace smt {

inline const std::array<std::string, 8> kSyntheticFamilies = {
    "factual", "opinion", "context", "temporal", "numerical", "entity", "causal", "contradiction"};

struct SyntheticConfig {
  uint64_t seed = 1234;
  int64_t num_train = 4096;
  int64_t num_heldout = 1024;
  // Long-context items: this fraction of items carries filler text so that the evidence
  // sits about `long_context_chars` bytes before the claim (0 = no long-context items).
  double long_context_fraction = 0.1;
  int64_t long_context_chars = 2048;
};

struct SyntheticItem {
  std::string evidence;  // context text (may be empty); filler for long-context items
  std::string claim;
  bool is_true = false;
  int family = 0;        // index into kSyntheticFamilies
  bool long_context = false;
  // Bytes at the start of `evidence` that are the real evidence; the rest is filler
  // (== evidence.size() for ordinary items).
  int64_t evidence_chars = 0;
};

enum class SyntheticSplit { kTrain, kHeldout };

// Items of one split; item i depends only on (seed, split, i, long-context settings).
// Item i has family i % 8 and truth ((i / 8) % 2 == 0), so every family is balanced.
// The splits come from separate Philox streams and use disjoint combinations of surface choices
// (e.g. country x topic x template), so no (evidence, claim) occurs in both; generating the
// held-out split checks that against the train split of the same config (throws smt::Error).
std::vector<SyntheticItem> generate_synthetic(const SyntheticConfig& config, SyntheticSplit split);
// Tokens = encode_fields({evidence, claim}); label 1 = true; group = family
// (group_names = families, plus "long_context" as group 8 when long_context).
Dataset make_synthetic_dataset(const std::vector<SyntheticItem>& items, const std::string& name,
                               const Tokenizer& tokenizer = {});

// One JSON object per line: {"family", "is_true", "long_context", "evidence", "claim"}.
// Throws smt::Error when the file cannot be written.
void write_synthetic_jsonl(const std::string& path, const std::vector<SyntheticItem>& items);

// The hidden knowledge base of a seed, exposed for tests and reports (the model never sees it).
// Every invented name is distinct. Factual claims say "<capital> is an old city" (true for the
// half of the capitals marked old); entity claims say "N is a river", true for the rivers and
// false for the mountains.
struct SyntheticKb {
  std::vector<std::string> countries;  // [num_countries]
  std::vector<std::string> capitals;   // [num_countries] capital city of each country
  std::vector<std::string> rivers;     // [num_rivers]
  std::vector<std::string> mountains;  // [num_rivers] (entity claims: "N is a river" is false for these)
  std::vector<uint8_t> old_city;       // [num_countries] 1 = its capital is an old city
};
SyntheticKb make_synthetic_kb(uint64_t seed);

}  // namespace smt
