// Batching: fixed-length rows of N tokens, right-padded with PAD; an example longer than N
// keeps its LAST N tokens (the claim sits at the end). Packed rows (language-model pretraining,
// data.pack): consecutive examples of the order concatenated (each keeps its BOS/EOS) until the row
// is full, the last one cut where the row ends (its remainder is dropped) — no padding. The loader
// walks a seeded permutation of the data set per epoch; its cursor (epoch, position) is all the
// state it has, packed or not.
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

// Packed rows: row r holds examples example_indices[row_begin[r] .. row_begin[r+1]) in order,
// concatenated and cut at seq_len; labels/groups/example_idx of a row are its first example's.
Batch make_packed_batch(const Dataset& data, const std::vector<int64_t>& example_indices,
                        const std::vector<size_t>& row_begin, int64_t seq_len);

// Rows [first, last) of a batch (a data-parallel rank's shard of the global batch).
Batch slice_rows(const Batch& batch, int64_t first, int64_t last);

struct LoaderCursor {
  uint64_t epoch = 0;
  uint64_t position = 0;  // examples consumed in this epoch
};

class DataLoader {
 public:
  // pack: rows of concatenated examples (see the top of this file) instead of one padded example each.
  DataLoader(const Dataset& data, uint64_t seed, int64_t batch_size, int64_t seq_len, bool pack = false);
  // Next batch_size rows from the shuffled order (wraps into the next epoch): batch_size examples, or
  // packed, as many examples as fill batch_size rows of seq_len tokens.
  Batch next();
  LoaderCursor cursor() const { return cursor_; }
  void set_cursor(LoaderCursor c);

 private:
  const Dataset* data_;
  uint64_t seed_;
  int64_t batch_size_, seq_len_;
  bool pack_;
  LoaderCursor cursor_;
  int64_t next_index();  // the example at the cursor; advances it (next epoch when the order is done)
  std::vector<int64_t> order_;  // permutation of the current epoch
  void shuffle_epoch();
};

}  // namespace smt
