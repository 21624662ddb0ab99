// Data-set selection from the config (see source.h).
#include "data/source.h"

#include <filesystem>

#include "core/error.h"
#include "data/liar.h"
#include "data/synthetic.h"

namespace smt {

namespace {
SyntheticConfig synthetic_config(const DataConfig& c, uint64_t seed) {
  SyntheticConfig s;
  s.seed = seed;
  s.num_train = c.synthetic_train;
  s.num_heldout = c.synthetic_heldout;
  s.long_context_fraction = c.long_context_fraction;
  s.long_context_chars = c.long_context_chars;
  return s;
}

std::string liar_file(const DataConfig& c, const std::string& split) {
  const std::filesystem::path p = std::filesystem::path(c.path) / (split + ".tsv");
  SMT_USAGE_CHECK(std::filesystem::is_regular_file(p), "LIAR file not found: ", p.string(),
                  " (data.path must be the folder holding train.tsv and valid.tsv)");
  return p.string();
}

Dataset liar_split(const DataConfig& c, const std::string& split, const Tokenizer& tokenizer) {
  const LiarFields fields = parse_liar_fields(c.fields);
  return make_liar_dataset(read_liar_tsv(liar_file(c, split)), fields, c.binary, "liar:" + split, tokenizer);
}
}  // namespace

DataSplits load_data(const DataConfig& c, uint64_t seed, const Tokenizer& tokenizer) {
  DataSplits s;
  if (c.source == "liar") {
    liar_file(c, "train");
    liar_file(c, "valid");
    s.train = liar_split(c, "train", tokenizer);
    s.heldout = liar_split(c, "valid", tokenizer);
  } else {
    const SyntheticConfig sc = synthetic_config(c, seed);
    s.train = make_synthetic_dataset(generate_synthetic(sc, SyntheticSplit::kTrain), "synthetic:train", tokenizer);
    s.heldout = make_synthetic_dataset(generate_synthetic(sc, SyntheticSplit::kHeldout), "synthetic:heldout", tokenizer);
  }
  return s;
}

Dataset load_heldout(const DataConfig& c, uint64_t seed, const Tokenizer& tokenizer) {
  if (c.source == "liar") return liar_split(c, "valid", tokenizer);
  return make_synthetic_dataset(generate_synthetic(synthetic_config(c, seed), SyntheticSplit::kHeldout),
                                "synthetic:heldout", tokenizer);
}

}  // namespace smt
