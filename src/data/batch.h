// Batching: fixed-length rows of N tokens, right-padded with PAD; an example longer than N
// keeps its LAST N tokens (the claim sits at the end). The loader walks a seeded permutation
// of the data set per epoch; its cursor (epoch, position) is all the state it has.
#pragma once
#include <cstdint>
#include <vector>

#include "data/dataset.h"

namespace smt {

struct Batch {
  int64_t batch_size = 0, seq_len = 0;  // B, N
  std::vector<int32_t> tokens;          // [B, N]
  std::vector<uint8_t> valid;           // [B, N] 1 = not PAD
  std::vector<int32_t> labels;          // [B]
  std::vector<int32_t> groups;          // [B]
  std::vector<int32_t> lm_targets;      // [B, N] next token, -1 where none (PAD or last)
  std::vector<int64_t> example_idx;     // [B] index into the data set
};

// Rows for the given example indices.
Batch make_batch(const Dataset& data, const std::vector<int64_t>& example_indices, int64_t seq_len);

// Rows [first, last) of a batch (a data-parallel rank's shard of the global batch).
Batch slice_rows(const Batch& batch, int64_t first, int64_t last);

struct LoaderCursor {
  uint64_t epoch = 0;
  uint64_t position = 0;  // examples consumed in this epoch
};

class DataLoader {
 public:
  DataLoader(const Dataset& data, uint64_t seed, int64_t batch_size, int64_t seq_len);
  // Next batch_size examples of the shuffled order (wraps into the next epoch).
  Batch next();
  LoaderCursor cursor() const { return cursor_; }
  void set_cursor(LoaderCursor c);

 private:
  const Dataset* data_;
  uint64_t seed_;
  int64_t batch_size_, seq_len_;
  LoaderCursor cursor_;
  std::vector<int64_t> order_;  // permutation of the current epoch
  void shuffle_epoch();
};

}  // namespace smt
