// Batching and the seeded data loader. Rows are right-padded with PAD; an over-long example keeps
// its LAST seq_len tokens. The loader's order for epoch e is a Fisher-Yates shuffle drawn from
// Rng(seed, stream = e), so the cursor (epoch, position) alone determines every later batch.
#include "data/batch.h"

#include <algorithm>
#include <numeric>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"

namespace smt {

Batch make_batch(const Dataset& data, const std::vector<int64_t>& example_indices, int64_t seq_len) {
  SMT_CHECK(seq_len > 0, "make_batch: seq_len must be positive, got ", seq_len);
  Batch b;
  b.batch_size = static_cast<int64_t>(example_indices.size());
  b.seq_len = seq_len;
  const auto rows = static_cast<size_t>(b.batch_size), cols = static_cast<size_t>(seq_len);
  b.tokens.assign(rows * cols, kPadToken);
  b.valid.assign(rows * cols, 0);
  b.lm_targets.assign(rows * cols, -1);
  b.labels.resize(rows);
  b.groups.resize(rows);
  b.example_idx = example_indices;
  for (size_t r = 0; r < rows; ++r) {
    const int64_t idx = example_indices[r];
    SMT_CHECK(idx >= 0 && idx < static_cast<int64_t>(data.examples.size()), "make_batch: example index ", idx,
              " outside data set ", data.name, " of ", data.examples.size(), " examples");
    const Example& ex = data.examples[static_cast<size_t>(idx)];
    const size_t len = std::min(ex.tokens.size(), cols);
    const size_t start = ex.tokens.size() - len;  // keep the last `len` tokens
    int32_t* row = b.tokens.data() + r * cols;
    uint8_t* vrow = b.valid.data() + r * cols;
    for (size_t n = 0; n < len; ++n) {
      row[n] = ex.tokens[start + n];
      vrow[n] = row[n] != kPadToken ? 1 : 0;
    }
    int32_t* trow = b.lm_targets.data() + r * cols;
    for (size_t n = 0; n + 1 < cols; ++n) trow[n] = row[n + 1] == kPadToken ? -1 : row[n + 1];
    b.labels[r] = ex.label;
    b.groups[r] = ex.group;
  }
  return b;
}

DataLoader::DataLoader(const Dataset& data, uint64_t seed, int64_t batch_size, int64_t seq_len, bool pack)
    : data_(&data), seed_(seed), batch_size_(batch_size), seq_len_(seq_len), pack_(pack) {
  SMT_CHECK(!data.examples.empty(), "DataLoader: data set ", data.name, " is empty");
  SMT_CHECK(batch_size > 0, "DataLoader: batch_size must be positive, got ", batch_size);
  SMT_CHECK(seq_len > 0, "DataLoader: seq_len must be positive, got ", seq_len);
  SMT_CHECK(!pack || std::any_of(data.examples.begin(), data.examples.end(), [](const Example& e) { return !e.tokens.empty(); }),
            "DataLoader: data set ", data.name, " has no tokens to pack");
  shuffle_epoch();
}

Batch make_packed_batch(const Dataset& data, const std::vector<int64_t>& example_indices,
                        const std::vector<size_t>& row_begin, int64_t seq_len) {
  SMT_CHECK(seq_len > 0, "make_packed_batch: seq_len must be positive, got ", seq_len);
  SMT_CHECK(!row_begin.empty() && row_begin.back() == example_indices.size(), "make_packed_batch: row_begin must end at ",
            example_indices.size());
  Batch b;
  b.batch_size = static_cast<int64_t>(row_begin.size()) - 1;
  b.seq_len = seq_len;
  const auto rows = static_cast<size_t>(b.batch_size), cols = static_cast<size_t>(seq_len);
  b.tokens.assign(rows * cols, kPadToken);
  b.valid.assign(rows * cols, 0);
  b.lm_targets.assign(rows * cols, -1);
  for (size_t r = 0; r < rows; ++r) {
    SMT_CHECK(row_begin[r] < row_begin[r + 1], "make_packed_batch: row ", r, " has no example");
    int32_t* row = b.tokens.data() + r * cols;
    size_t filled = 0;
    for (size_t i = row_begin[r]; i < row_begin[r + 1] && filled < cols; ++i) {
      const int64_t idx = example_indices[i];
      SMT_CHECK(idx >= 0 && idx < static_cast<int64_t>(data.examples.size()), "make_packed_batch: example index ", idx,
                " outside data set ", data.name, " of ", data.examples.size(), " examples");
      const auto& toks = data.examples[static_cast<size_t>(idx)].tokens;
      const size_t take = std::min(toks.size(), cols - filled);
      std::copy(toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(take), row + filled);
      filled += take;
    }
    uint8_t* vrow = b.valid.data() + r * cols;
    int32_t* trow = b.lm_targets.data() + r * cols;
    for (size_t n = 0; n < cols; ++n) vrow[n] = row[n] != kPadToken ? 1 : 0;
    for (size_t n = 0; n + 1 < cols; ++n) trow[n] = row[n + 1] == kPadToken ? -1 : row[n + 1];
    const Example& first = data.examples[static_cast<size_t>(example_indices[row_begin[r]])];
    b.labels.push_back(first.label);
    b.groups.push_back(first.group);
    b.example_idx.push_back(example_indices[row_begin[r]]);
  }
  return b;
}

void DataLoader::shuffle_epoch() {
  const auto n = static_cast<int64_t>(data_->examples.size());
  order_.resize(static_cast<size_t>(n));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  Rng rng(seed_, cursor_.epoch);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(order_[static_cast<size_t>(i)], order_[static_cast<size_t>(j)]);
  }
}

int64_t DataLoader::next_index() {
  if (cursor_.position >= data_->examples.size()) {
    ++cursor_.epoch;
    cursor_.position = 0;
    shuffle_epoch();
  }
  return order_[cursor_.position++];
}

Batch DataLoader::next() {
  std::vector<int64_t> indices;
  if (!pack_) {
    indices.reserve(static_cast<size_t>(batch_size_));
    while (static_cast<int64_t>(indices.size()) < batch_size_) indices.push_back(next_index());
    return make_batch(*data_, indices, seq_len_);
  }
  std::vector<size_t> row_begin;
  for (int64_t r = 0; r < batch_size_; ++r) {
    row_begin.push_back(indices.size());
    for (int64_t filled = 0; filled < seq_len_;) {
      const int64_t idx = next_index();
      indices.push_back(idx);
      filled += static_cast<int64_t>(data_->examples[static_cast<size_t>(idx)].tokens.size());
    }
  }
  row_begin.push_back(indices.size());
  return make_packed_batch(*data_, indices, row_begin, seq_len_);
}

void DataLoader::set_cursor(LoaderCursor c) {
  const auto n = static_cast<uint64_t>(data_->examples.size());
  SMT_CHECK(c.position <= n, "DataLoader::set_cursor: position ", c.position, " beyond the ", n,
            " examples of ", data_->name);
  const bool reshuffle = c.epoch != cursor_.epoch;
  cursor_ = c;
  if (reshuffle) shuffle_epoch();
}

Batch slice_rows(const Batch& batch, int64_t first, int64_t last) {
  SMT_CHECK(0 <= first && first <= last && last <= batch.batch_size, "slice_rows: rows [", first, ", ", last,
            ") outside a batch of ", batch.batch_size);
  const int64_t N = batch.seq_len;
  Batch s;
  s.batch_size = last - first;
  s.seq_len = N;
  auto rows = [&](const auto& v, int64_t width) {
    using V = std::decay_t<decltype(v)>;
    if (v.empty()) return V{};
    return V(v.begin() + first * width, v.begin() + last * width);
  };
  s.tokens = rows(batch.tokens, N);
  s.valid = rows(batch.valid, N);
  s.labels = rows(batch.labels, 1);
  s.groups = rows(batch.groups, 1);
  s.lm_targets = rows(batch.lm_targets, N);
  s.example_idx = rows(batch.example_idx, 1);
  return s;
}

}  // namespace smt
