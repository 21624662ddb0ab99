// Synthetic claims: true/false claims about a hidden knowledge base drawn from the seed, in
// eight families (one per expert name of the original prototype). Deterministic by seed;
// train and held-out splits never share an item. Must be learnable by a small model.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

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
};

enum class SyntheticSplit { kTrain, kHeldout };

std::vector<SyntheticItem> generate_synthetic(const SyntheticConfig& config, SyntheticSplit split);
// Tokens = encode_fields({evidence, claim}); label 1 = true; group = family
// (group_names = families, plus "long_context" as group 8 when long_context).
Dataset make_synthetic_dataset(const std::vector<SyntheticItem>& items, const std::string& name);

}  // namespace smt
