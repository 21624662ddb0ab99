// Tests of the shared per-query-block rule (kernels/attention_pattern_rule.h) that the CPU and the CUDA
// mask builders both call: build_block_mask against the builder as it was before the rule was shared
// (commit d8640d3, kept below verbatim as the reference: a per-query-block kind array and a full
// Fisher-Yates over a materialised candidate list), bit for bit over a sweep with larger block counts and
// many seeds; the allocation-free random draw against the full Fisher-Yates; the count and fill passes
// of pattern_row; scratch bounds; and Philox (which the draw runs on the device too) against the
// Random123 known-answer vectors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/attention_pattern.h"
#include "kernels/attention_pattern_rule.h"
#include "support/pattern_config.h"

namespace smt {
namespace {

// ---- The builder before the shared rule (verbatim apart from names) ------------------------------

namespace legacy {

struct Tile {
  int64_t q_lo, q_hi, k_lo, k_hi;
};

Tile tile_of(int64_t qb, int64_t kb, int64_t bs, int64_t seq_len) {
  return {qb * bs, std::min(seq_len, (qb + 1) * bs) - 1, kb * bs, std::min(seq_len, (kb + 1) * bs) - 1};
}

bool tile_has_pair(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_lo > t.q_hi) return false;
  if (!window_kind) return true;
  int64_t min_dist;
  if (causal) {
    min_dist = std::max<int64_t>(0, t.q_lo - t.k_hi);
  } else {
    min_dist = std::max<int64_t>({0, t.k_lo - t.q_hi, t.q_lo - t.k_hi});
  }
  return min_dist <= window;
}

bool tile_is_full(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_hi > t.q_lo) return false;
  if (!window_kind) return true;
  const int64_t max_dist = std::max(t.q_hi - t.k_lo, t.k_hi - t.q_lo);
  return max_dist <= window;
}

std::vector<int32_t> draw_random_blocks(int64_t qb, int64_t num_blocks, bool causal, int64_t r, uint64_t seed,
                                        int64_t layer_idx) {
  std::vector<int32_t> c;
  const int64_t end = causal ? qb : num_blocks;
  for (int64_t kb = 0; kb < end; ++kb)
    if (kb != qb) c.push_back(static_cast<int32_t>(kb));
  const int64_t n = static_cast<int64_t>(c.size());
  if (r >= n) return c;
  Rng rng(seed, (static_cast<uint64_t>(layer_idx) << 32) | static_cast<uint64_t>(qb));
  for (int64_t i = 0; i < r; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
    std::swap(c[i], c[j]);
  }
  c.resize(r);
  return c;
}

BlockMask build(const AttnPatternConfig& config, int seq_len, int layer_idx) {
  BlockMask m;
  m.config = config;
  m.seq_len = seq_len;
  m.block_size = config.block_size;
  const int64_t bs = config.block_size;
  const int64_t nb = (static_cast<int64_t>(seq_len) + bs - 1) / bs;
  m.num_blocks = static_cast<int>(nb);
  const bool causal = config.causal;
  const int64_t window = config.window;

  constexpr int8_t kNone = -1;
  std::vector<int8_t> kind(nb);
  auto mark_whole = [&](int64_t kb) { kind[kb] = BlockMask::kWhole; };
  auto mark_window_range = [&](int64_t qb) {
    const Tile t = tile_of(qb, 0, bs, seq_len);
    const int64_t k_first = std::max<int64_t>(0, t.q_lo - window);
    const int64_t k_last = causal ? t.q_hi : std::min<int64_t>(seq_len - 1, t.q_hi + window);
    for (int64_t kb = k_first / bs; kb <= k_last / bs; ++kb)
      if (kind[kb] == kNone) kind[kb] = BlockMask::kWindow;
  };

  m.q_row_ptr.assign(nb + 1, 0);
  for (int64_t qb = 0; qb < nb; ++qb) {
    std::fill(kind.begin(), kind.end(), kNone);
    switch (config.kind) {
      case AttnPatternKind::kDense:
        for (int64_t kb = 0; kb < nb; ++kb) mark_whole(kb);
        break;
      case AttnPatternKind::kLocal:
        mark_window_range(qb);
        break;
      case AttnPatternKind::kRandom:
        mark_whole(qb);
        for (int32_t kb : draw_random_blocks(qb, nb, causal, config.num_random_blocks, config.seed, layer_idx))
          mark_whole(kb);
        break;
      case AttnPatternKind::kBlockSparse: {
        const int64_t s = config.stride_blocks;
        for (int64_t kb = 0; kb < nb; ++kb)
          if (kb / s == qb / s || kb % s == s - 1) mark_whole(kb);
        break;
      }
      case AttnPatternKind::kBigBird: {
        const int64_t g = config.num_global_blocks;
        for (int64_t kb = 0; kb < nb; ++kb)
          if (qb < g || kb < g) mark_whole(kb);
        for (int32_t kb : draw_random_blocks(qb, nb, causal, config.num_random_blocks, config.seed, layer_idx))
          mark_whole(kb);
        mark_window_range(qb);
        break;
      }
    }
    for (int64_t kb = 0; kb < nb; ++kb) {
      if (kind[kb] == kNone) continue;
      if (causal && kb > qb) continue;
      const bool window_kind = kind[kb] == BlockMask::kWindow;
      const Tile t = tile_of(qb, kb, bs, seq_len);
      if (!tile_has_pair(t, causal, window_kind, window)) continue;
      m.q_col_idx.push_back(static_cast<int32_t>(kb));
      m.q_kind.push_back(static_cast<uint8_t>(kind[kb]));
      m.q_is_full.push_back(tile_is_full(t, causal, window_kind, window) ? 1 : 0);
    }
    m.q_row_ptr[qb + 1] = static_cast<int32_t>(m.q_col_idx.size());
  }

  const int64_t nnz = static_cast<int64_t>(m.q_col_idx.size());
  m.kv_col_ptr.assign(nb + 1, 0);
  for (int64_t e = 0; e < nnz; ++e) ++m.kv_col_ptr[m.q_col_idx[e] + 1];
  for (int64_t kb = 0; kb < nb; ++kb) m.kv_col_ptr[kb + 1] += m.kv_col_ptr[kb];
  m.kv_row_idx.resize(nnz);
  m.kv_entry.resize(nnz);
  std::vector<int32_t> fill(m.kv_col_ptr.begin(), m.kv_col_ptr.end() - 1);
  for (int64_t qb = 0; qb < nb; ++qb) {
    for (int32_t e = m.q_row_ptr[qb]; e < m.q_row_ptr[qb + 1]; ++e) {
      const int32_t slot = fill[m.q_col_idx[e]]++;
      m.kv_row_idx[slot] = static_cast<int32_t>(qb);
      m.kv_entry[slot] = e;
    }
  }
  return m;
}

}  // namespace legacy

// ---- Sweep ----------------------------------------------------------------------------------------

using testing_support::describe_pattern;
using testing_support::make_pattern;


// Every pattern, causal and not, sequence lengths that are and are not block multiples, up to 150
// blocks (random draws with r small, near n, at n and beyond n).
std::vector<std::pair<AttnPatternConfig, int>> wide_sweep() {
  std::vector<std::pair<AttnPatternConfig, int>> out;
  for (bool causal : {true, false})
    for (int bs : {1, 4, 16})
      for (int n : {1, 5, 16, 97, 600}) {
        if (n / bs > 150) continue;
        out.push_back({make_pattern(AttnPatternKind::kDense, causal, bs), n});
        for (int w : {0, 1, 7, 16, 40, 5000}) {
          auto c = make_pattern(AttnPatternKind::kLocal, causal, bs);
          c.window = w;
          out.push_back({c, n});
        }
        const int nb = (n + bs - 1) / bs;
        for (int r : {0, 1, 3, 17, nb - 3, nb - 2, nb - 1, nb, 1000}) {
          if (r < 0) continue;
          for (uint64_t seed : {uint64_t{0}, uint64_t{7}, uint64_t{0xFFFFFFFFFFFFull}}) {
            auto c = make_pattern(AttnPatternKind::kRandom, causal, bs);
            c.num_random_blocks = r;
            c.seed = seed;
            out.push_back({c, n});
          }
        }
        for (int s : {1, 2, 5, 200}) {
          auto c = make_pattern(AttnPatternKind::kBlockSparse, causal, bs);
          c.stride_blocks = s;
          out.push_back({c, n});
        }
        for (int g : {0, 1, 3})
          for (int w : {0, 6, 33})
            for (int r : {0, 2, 9}) {
              auto c = make_pattern(AttnPatternKind::kBigBird, causal, bs);
              c.num_global_blocks = g;
              c.window = w;
              c.num_random_blocks = r;
              c.seed = 1000u + static_cast<uint64_t>(g * 10 + r);
              out.push_back({c, n});
            }
      }
  return out;
}

void expect_same_mask(const BlockMask& a, const BlockMask& b, const std::string& what) {
  ASSERT_EQ(a.seq_len, b.seq_len) << what;
  ASSERT_EQ(a.block_size, b.block_size) << what;
  ASSERT_EQ(a.num_blocks, b.num_blocks) << what;
  ASSERT_EQ(a.q_row_ptr, b.q_row_ptr) << what;
  ASSERT_EQ(a.q_col_idx, b.q_col_idx) << what;
  ASSERT_EQ(a.q_kind, b.q_kind) << what;
  ASSERT_EQ(a.q_is_full, b.q_is_full) << what;
  ASSERT_EQ(a.kv_col_ptr, b.kv_col_ptr) << what;
  ASSERT_EQ(a.kv_row_idx, b.kv_row_idx) << what;
  ASSERT_EQ(a.kv_entry, b.kv_entry) << what;
}

// ---- Tests ----------------------------------------------------------------------------------------

TEST(AttentionPatternRule, BuildBlockMaskEqualsThePreviousBuilderBitForBit) {
  int random_masks_with_partial_draws = 0;
  for (const auto& [c, n] : wide_sweep()) {
    for (int layer : {0, 3}) {
      const BlockMask now = build_block_mask(c, n, layer);
      const BlockMask before = legacy::build(c, n, layer);
      expect_same_mask(now, before, describe_pattern(c, n, layer));
      if (HasFatalFailure()) return;
      const int nb = now.num_blocks;
      if (c.kind == AttnPatternKind::kRandom && c.num_random_blocks > 0 && c.num_random_blocks < nb - 1)
        ++random_masks_with_partial_draws;
    }
  }
  // The sweep reaches the sparse Fisher-Yates path (r < n), not only the take-all path.
  EXPECT_GT(random_masks_with_partial_draws, 50);
}

TEST(AttentionPatternRule, DrawEqualsFullFisherYatesSorted) {
  // Many (qb, nb, r, seed, layer) combinations, including r = n - 1 (every swap may reach past r).
  int compared = 0;
  for (int nb : {2, 3, 10, 64, 300})
    for (bool causal : {false, true})
      for (int r : {1, 2, 5, 31, 150, 298})
        for (uint64_t seed : {uint64_t{1}, uint64_t{123456789}})
          for (int layer : {0, 11})
            for (int qb = 0; qb < nb; qb += std::max(1, nb / 7)) {
              std::vector<int32_t> expect = legacy::draw_random_blocks(qb, nb, causal, r, seed, layer);
              std::sort(expect.begin(), expect.end());
              AttnPatternConfig c = make_pattern(AttnPatternKind::kRandom, causal, 1);
              c.num_random_blocks = r;
              std::vector<int32_t> scratch(static_cast<size_t>(pattern::random_draw_scratch_words(c, nb)) + 1, -77);
              const int64_t drawn = pattern::draw_random_blocks(qb, nb, causal, r, seed, layer, scratch.data());
              const int64_t n = causal ? qb : nb - 1;
              if (r >= n) {
                EXPECT_EQ(drawn, -1);
                continue;
              }
              ASSERT_EQ(drawn, r);
              std::vector<int32_t> got;
              const uint32_t* bits = pattern::draw_bitmap(scratch.data(), r);
              for (int kb = 0; kb < nb; ++kb)
                if ((bits[kb / 32] >> (kb % 32)) & 1u) got.push_back(kb);
              EXPECT_EQ(got, expect)
                  << "nb " << nb << " causal " << causal << " r " << r << " qb " << qb << " seed " << seed;
              EXPECT_EQ(scratch.back(), -77) << "scratch overrun";
              ++compared;
            }
  EXPECT_GT(compared, 300);
}

TEST(AttentionPatternRule, CountPassEqualsFillPassAndListsAreAscending) {
  for (const auto& [c, n] : wide_sweep()) {
    const int64_t nb = pattern::num_blocks_of(n, c.block_size);
    const int64_t words = pattern::random_draw_scratch_words(c, nb);
    std::vector<int32_t> scratch(static_cast<size_t>(words) + 4, -5);
    std::vector<int32_t> cols(nb + 4, -9);
    std::vector<uint8_t> kinds(nb + 4, 9), fulls(nb + 4, 9);
    for (int qb = 0; qb < nb; ++qb) {
      std::fill(cols.begin(), cols.end(), -9);
      const int counted = pattern::pattern_row(c, n, 2, qb, scratch.data(), nullptr, nullptr, nullptr);
      const int filled = pattern::pattern_row(c, n, 2, qb, scratch.data(), cols.data(), kinds.data(), fulls.data());
      ASSERT_EQ(counted, filled) << describe_pattern(c, n, 2) << " qb " << qb;
      ASSERT_GE(filled, 1) << "every pattern lists the diagonal block: " << describe_pattern(c, n, 2);
      ASSERT_LE(filled, nb);
      for (int i = 0; i < filled; ++i) {
        ASSERT_TRUE(cols[i] >= 0 && cols[i] < nb) << describe_pattern(c, n, 2);
        if (i > 0) ASSERT_LT(cols[i - 1], cols[i]) << describe_pattern(c, n, 2);
        ASSERT_LE(kinds[i], 1);
        ASSERT_LE(fulls[i], 1);
      }
      EXPECT_EQ(cols[filled], -9) << "wrote past its count: " << describe_pattern(c, n, 2);
      for (size_t i = static_cast<size_t>(words); i < scratch.size(); ++i)
        ASSERT_EQ(scratch[i], -5) << "scratch overrun: " << describe_pattern(c, n, 2);
    }
  }
}

TEST(AttentionPatternRule, ScratchWordsOnlyForRandomPatternsThatDraw) {
  EXPECT_EQ(pattern::draw_table_slots(1), 2);
  EXPECT_EQ(pattern::draw_table_slots(5), 16);
  EXPECT_EQ(pattern::draw_table_slots(8), 16);
  auto c = make_pattern(AttnPatternKind::kRandom, false, 4);
  c.num_random_blocks = 5;
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 100), 5 + 2 * 16 + 4);
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 7), 5 + 2 * 16 + 1);  // r = nb - 2: the last query block draws
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 6), 0);           // r >= n = nb - 1 for every query block
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 3), 0);
  c.kind = AttnPatternKind::kBigBird;
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 100), 5 + 2 * 16 + 4);
  c.num_random_blocks = 0;
  EXPECT_EQ(pattern::random_draw_scratch_words(c, 100), 0);
  for (auto k : {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kBlockSparse}) {
    auto d = make_pattern(k, true, 4);
    d.num_random_blocks = 5;
    EXPECT_EQ(pattern::random_draw_scratch_words(d, 100), 0);
  }
}

TEST(AttentionPatternRule, NextSetBitWalksTheBitmap) {
  // Bits 0, 31, 32, 70, 99 of a 100-bit map (4 words).
  const uint32_t bitmap[4] = {1u | (1u << 31), 1u, 1u << (70 - 64), 1u << (99 - 96)};
  const std::vector<std::pair<int, int>> from_to = {{0, 0},   {1, 31},  {31, 31}, {32, 32}, {33, 70},
                                                    {70, 70}, {71, 99}, {99, 99}, {100, 100}, {150, 100}};
  for (const auto& [from, to] : from_to) EXPECT_EQ(pattern::next_set_bit(bitmap, 100, from), to) << from;
  const uint32_t empty[2] = {0, 0};
  EXPECT_EQ(pattern::next_set_bit(empty, 40, 0), 40);
  EXPECT_EQ(pattern::next_set_bit(empty, 40, 39), 40);
}

// Random123's known-answer vectors for Philox4x32-10 (kat_vectors: counter, key -> output).
TEST(AttentionPatternRule, PhiloxMatchesRandom123KnownAnswers) {
  struct Kat {
    std::array<uint32_t, 4> ctr;
    std::array<uint32_t, 2> key;
    std::array<uint32_t, 4> out;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    EXPECT_EQ(philox4x32(k.ctr, k.key), k.out);
    uint32_t w[4] = {k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]};
    philox4x32_inplace(w, k.key[0], k.key[1]);
    EXPECT_EQ((std::array<uint32_t, 4>{w[0], w[1], w[2], w[3]}), k.out);
  }
}

TEST(AttentionPatternRule, RngWordsComposeFromPhiloxBlocks) {
  // philox(seed, stream, index) = Philox4x32-10(counter {index lo, index hi, stream lo, stream hi},
  // key {seed lo, seed hi}); next_u64 = word0 << 32 | word1 of the block at the position, one block a draw.
  const uint64_t seed = 0x0123456789ABCDEFull, stream = 0xFEDCBA9876543210ull;
  Rng a(seed, stream), b(seed, stream);
  for (uint64_t i = 0; i < 20; ++i) {
    const auto block = philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                   static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)},
                                  {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
    EXPECT_EQ(philox(seed, stream, i), block);
    EXPECT_EQ(a.next_block(), block);
    EXPECT_EQ(b.next_u64(), (static_cast<uint64_t>(block[0]) << 32) | block[1]);
  }
  EXPECT_EQ(a.position(), 20u);
  EXPECT_EQ(b.position(), 20u);
  Rng c(seed, stream), d(seed, stream);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(c.below(1000003), d.next_u64() % 1000003);
}

}  // namespace
}  // namespace smt
