// The training and held-out sets named by a DataConfig: the synthetic generator's two splits,
// or LIAR's train.tsv and valid.tsv from data.path.
#pragma once
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "model/config.h"

namespace smt {

struct DataSplits {
  Dataset train;
  Dataset heldout;
};

// Throws UsageError for missing LIAR files (checked before any work starts). Examples are
// encoded with `tokenizer` (make_tokenizer(data.tokenizer, model.vocab_size)).
DataSplits load_data(const DataConfig& config, uint64_t seed, const Tokenizer& tokenizer = {});
// The held-out split only (evaluation).
Dataset load_heldout(const DataConfig& config, uint64_t seed, const Tokenizer& tokenizer = {});

}  // namespace smt
