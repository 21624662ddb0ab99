// Tests of the byte tokenizer, Dataset helpers, make_batch and the seeded DataLoader.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace smt {
namespace {

TEST(DataTokenizer, RoundTripAllBytes) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const auto ids = encode_bytes(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[static_cast<size_t>(b)], b);
  EXPECT_EQ(decode_tokens(ids), all);
  EXPECT_EQ(decode_tokens(encode_bytes("h\xc3\xa9llo")), "h\xc3\xa9llo");  // multi-byte UTF-8 stays bytes
}

TEST(DataTokenizer, SpecialsAndFields) {
  EXPECT_EQ(kVocabSize, 260);
  const auto ids = encode_fields({"ab", "", "c"});
  const std::vector<int32_t> expected = {kBosToken, 'a', 'b', kSepToken, kSepToken, 'c', kEosToken};
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(decode_tokens(ids), "<bos>ab<sep><sep>c<eos>");
  EXPECT_EQ(decode_tokens({kPadToken, 'x'}), "<pad>x");
  EXPECT_EQ(encode_fields({}), (std::vector<int32_t>{kBosToken, kEosToken}));
  EXPECT_THROW(decode_tokens({260}), Error);
  EXPECT_THROW(decode_tokens({-1}), Error);
}

Dataset toy_dataset(int n) {
  Dataset d;
  d.name = "toy";
  d.class_names = {"a", "b", "c"};
  for (int i = 0; i < n; ++i) {
    Example ex;
    ex.tokens.assign(static_cast<size_t>(1 + i % 5), 10 + i);
    ex.label = i % 3;
    ex.group = i % 2;
    d.examples.push_back(ex);
  }
  return d;
}

TEST(DataDataset, LabelCountsAndMajority) {
  Dataset d;
  d.class_names = {"x", "y", "z"};
  for (int label : {2, 1, 2, 0, 1}) d.examples.push_back(Example{{1}, label, 0});
  EXPECT_EQ(d.label_counts(), (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(d.majority_label(), 1);  // tie between 1 and 2: lowest index
  EXPECT_DOUBLE_EQ(d.majority_accuracy(), 0.4);
  d.examples.push_back(Example{{1}, 3, 0});
  EXPECT_THROW(d.label_counts(), Error);
}

TEST(DataBatch, PaddingValidAndTargets) {
  Dataset d;
  d.class_names = {"f", "t"};
  d.examples.push_back(Example{{1, 2, 3}, 1, 4});
  d.examples.push_back(Example{{7, 8, 9, 10, 11, 12}, 0, 2});
  const Batch b = make_batch(d, {0, 1}, 5);
  EXPECT_EQ(b.batch_size, 2);
  EXPECT_EQ(b.seq_len, 5);
  const std::vector<int32_t> tokens = {1, 2, 3, kPadToken, kPadToken,  // right-padded
                                       8, 9, 10, 11, 12};               // keeps the LAST 5 tokens
  EXPECT_EQ(b.tokens, tokens);
  EXPECT_EQ(b.valid, (std::vector<uint8_t>{1, 1, 1, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(b.lm_targets, (std::vector<int32_t>{2, 3, -1, -1, -1, 9, 10, 11, 12, -1}));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(b.groups, (std::vector<int32_t>{4, 2}));
  EXPECT_EQ(b.example_idx, (std::vector<int64_t>{0, 1}));
  EXPECT_THROW(make_batch(d, {2}, 5), Error);
  EXPECT_THROW(make_batch(d, {0}, 0), Error);
}

TEST(DataBatch, ExactLengthHasNoPad) {
  Dataset d;
  d.class_names = {"f", "t"};
  d.examples.push_back(Example{{5, 6, 7, 8}, 1, 0});
  const Batch b = make_batch(d, {0, 0}, 4);
  EXPECT_EQ(b.tokens, (std::vector<int32_t>{5, 6, 7, 8, 5, 6, 7, 8}));
  EXPECT_TRUE(std::all_of(b.valid.begin(), b.valid.end(), [](uint8_t v) { return v == 1; }));
  EXPECT_EQ(b.lm_targets, (std::vector<int32_t>{6, 7, 8, -1, 6, 7, 8, -1}));
}

std::vector<int64_t> take_indices(DataLoader& loader, int num_batches) {
  std::vector<int64_t> out;
  for (int i = 0; i < num_batches; ++i) {
    const Batch b = loader.next();
    out.insert(out.end(), b.example_idx.begin(), b.example_idx.end());
  }
  return out;
}

TEST(DataLoader, DeterministicAndSeedSensitive) {
  const Dataset d = toy_dataset(37);
  DataLoader a(d, 11, 8, 6), b(d, 11, 8, 6), c(d, 12, 8, 6);
  const auto ia = take_indices(a, 10), ib = take_indices(b, 10), ic = take_indices(c, 10);
  EXPECT_EQ(ia, ib);
  EXPECT_NE(ia, ic);
  // The first epoch is a real shuffle, not the identity order.
  std::vector<int64_t> identity(8);
  for (int i = 0; i < 8; ++i) identity[static_cast<size_t>(i)] = i;
  EXPECT_NE(std::vector<int64_t>(ia.begin(), ia.begin() + 8), identity);
}

TEST(DataLoader, EachEpochIsAPermutationAndWraps) {
  const int n = 23;
  const Dataset d = toy_dataset(n);
  DataLoader loader(d, 5, 4, 8);
  // 3 epochs = 69 examples; batches of 4 straddle epoch boundaries.
  std::vector<int64_t> seen;
  while (seen.size() < static_cast<size_t>(3 * n)) {
    const Batch b = loader.next();
    ASSERT_EQ(b.batch_size, 4);
    seen.insert(seen.end(), b.example_idx.begin(), b.example_idx.end());
    for (int64_t r = 0; r < 4; ++r)
      EXPECT_EQ(b.labels[static_cast<size_t>(r)], d.examples[static_cast<size_t>(b.example_idx[static_cast<size_t>(r)])].label);
  }
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> ep(seen.begin() + e * n, seen.begin() + (e + 1) * n);
    std::vector<int64_t> sorted = ep;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i) << "epoch " << e;
    epochs.push_back(ep);
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a fresh permutation per epoch
  EXPECT_NE(epochs[1], epochs[2]);
  // 72 examples consumed at the end of the 18th batch: epoch 3, position 3.
  EXPECT_EQ(seen.size(), 72u);
  EXPECT_EQ(loader.cursor().epoch, 3u);
  EXPECT_EQ(loader.cursor().position, 3u);
}

TEST(DataLoader, CursorRestoreGivesSameBatches) {
  const Dataset d = toy_dataset(29);
  DataLoader a(d, 77, 6, 5);
  take_indices(a, 7);  // into the second epoch
  const LoaderCursor saved = a.cursor();
  EXPECT_EQ(saved.epoch, 1u);
  std::vector<Batch> expected;
  for (int i = 0; i < 9; ++i) expected.push_back(a.next());

  DataLoader b(d, 77, 6, 5);  // fresh loader, still in epoch 0
  b.set_cursor(saved);
  for (int i = 0; i < 9; ++i) {
    const Batch got = b.next();
    EXPECT_EQ(got.example_idx, expected[static_cast<size_t>(i)].example_idx) << "batch " << i;
    EXPECT_EQ(got.tokens, expected[static_cast<size_t>(i)].tokens) << "batch " << i;
  }
  // Restoring an earlier epoch on a loader that has moved on also works.
  DataLoader c(d, 77, 6, 5);
  const auto first = take_indices(c, 3);
  take_indices(c, 20);
  c.set_cursor(LoaderCursor{0, 0});
  EXPECT_EQ(take_indices(c, 3), first);
  EXPECT_THROW(c.set_cursor(LoaderCursor{0, 30}), Error);
}

// Packed rows: the examples of the loader's order (the unpacked loader of the same seed walks the same
// order) concatenated and cut at seq_len, with no padding, next-token targets, and a cursor that
// restores the same rows.
TEST(DataLoader, PackedRowsConcatenateTheOrder) {
  const Dataset d = toy_dataset(23);  // examples of 1..5 tokens
  const int64_t B = 3, N = 7;
  DataLoader packed(d, 9, B, N, /*pack=*/true), order(d, 9, 1, 8);
  std::vector<int64_t> pending;  // examples of the order not yet matched
  for (int batch = 0; batch < 12; ++batch) {  // several epochs
    const Batch b = packed.next();
    ASSERT_EQ(b.batch_size, B);
    ASSERT_EQ(b.tokens.size(), static_cast<size_t>(B * N));
    for (int64_t r = 0; r < B; ++r) {
      std::vector<int32_t> expect;
      int64_t first = -1;
      while (static_cast<int64_t>(expect.size()) < N) {
        const int64_t idx = order.next().example_idx[0];
        if (first < 0) first = idx;
        const auto& t = d.examples[static_cast<size_t>(idx)].tokens;
        expect.insert(expect.end(), t.begin(), t.end());
      }
      expect.resize(static_cast<size_t>(N));  // the last example is cut where the row ends
      const std::vector<int32_t> row(b.tokens.begin() + r * N, b.tokens.begin() + (r + 1) * N);
      EXPECT_EQ(row, expect) << "batch " << batch << " row " << r;
      EXPECT_EQ(b.example_idx[static_cast<size_t>(r)], first);
      EXPECT_EQ(b.labels[static_cast<size_t>(r)], d.examples[static_cast<size_t>(first)].label);
      for (int64_t n = 0; n < N; ++n) {
        EXPECT_EQ(b.valid[static_cast<size_t>(r * N + n)], 1);
        EXPECT_EQ(b.lm_targets[static_cast<size_t>(r * N + n)], n + 1 < N ? row[static_cast<size_t>(n + 1)] : -1);
      }
    }
  }
  // The cursor alone restores the stream of packed rows.
  const LoaderCursor c = packed.cursor();
  const Batch next = packed.next();
  DataLoader resumed(d, 9, B, N, true);
  resumed.set_cursor(c);
  EXPECT_EQ(resumed.next().tokens, next.tokens);
}

TEST(DataLoader, RejectsBadArguments) {
  const Dataset empty;
  EXPECT_THROW(DataLoader(empty, 1, 4, 8), Error);
  const Dataset d = toy_dataset(3);
  EXPECT_THROW(DataLoader(d, 1, 0, 8), Error);
  EXPECT_THROW(DataLoader(d, 1, 4, 0), Error);
  Dataset no_tokens = toy_dataset(3);
  for (auto& ex : no_tokens.examples) ex.tokens.clear();
  EXPECT_THROW(DataLoader(no_tokens, 1, 2, 8, /*pack=*/true), Error);  // packing could never fill a row
}

}  // namespace
}  // namespace smt
