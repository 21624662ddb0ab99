// Tests of the attention block masks: hand-checked lists per pattern, and a brute-force
// reference of the element rule (restated here from the header comment, independently of the
// implementation) against the lists, kinds, full flags, allowed(), densities and the
// transposed lists, over a sweep of configurations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention_pattern.h"
#include "support/pattern_config.h"

namespace smt {
namespace {

// ---- Reference rules, restated from attention_pattern.h -----------------------------------------

// Random key blocks of query block qb: candidates {kb != qb, kb < qb if causal}, all if r >= n,
// else partial Fisher-Yates with Rng(seed, (layer << 32) | qb).
std::set<int> ref_random_draw(int qb, int nb, bool causal, int r, uint64_t seed, int layer) {
  std::vector<int> c;
  for (int kb = 0; kb < nb; ++kb)
    if (kb != qb && (!causal || kb < qb)) c.push_back(kb);
  const int n = static_cast<int>(c.size());
  if (r >= n) return {c.begin(), c.end()};
  Rng rng(seed, (static_cast<uint64_t>(layer) << 32) | static_cast<uint64_t>(qb));
  for (int i = 0; i < r; ++i) {
    const int j = i + static_cast<int>(rng.below(static_cast<uint64_t>(n - i)));
    std::swap(c[i], c[j]);
  }
  return {c.begin(), c.begin() + r};
}

struct RefPattern {
  AttnPatternConfig c;
  int seq_len, layer, nb;
  std::vector<std::set<int>> draws;  // per qb (random, bigbird)

  RefPattern(const AttnPatternConfig& cfg, int n, int l) : c(cfg), seq_len(n), layer(l) {
    nb = (n + c.block_size - 1) / c.block_size;
    draws.resize(nb);
    if (c.kind == AttnPatternKind::kRandom || c.kind == AttnPatternKind::kBigBird)
      for (int qb = 0; qb < nb; ++qb) draws[qb] = ref_random_draw(qb, nb, c.causal, c.num_random_blocks, c.seed, l);
  }
  // Is the whole key block kb in for query block qb (kWhole)?
  bool whole(int qb, int kb) const {
    switch (c.kind) {
      case AttnPatternKind::kDense:
        return true;
      case AttnPatternKind::kLocal:
        return false;
      case AttnPatternKind::kRandom:
        return kb == qb || draws[qb].count(kb) > 0;
      case AttnPatternKind::kBlockSparse: {
        const int s = c.stride_blocks;
        return kb / s == qb / s || kb % s == s - 1;
      }
      case AttnPatternKind::kBigBird:
        return qb < c.num_global_blocks || kb < c.num_global_blocks || draws[qb].count(kb) > 0;
    }
    return false;
  }
  bool has_window() const { return c.kind == AttnPatternKind::kLocal || c.kind == AttnPatternKind::kBigBird; }
  bool allowed(int q, int k) const {
    if (c.causal && k > q) return false;
    const int qb = q / c.block_size, kb = k / c.block_size;
    if (whole(qb, kb)) return true;
    return has_window() && std::abs(q - k) <= c.window;
  }
  // Tile (qb, kb) clipped to seq_len.
  int q_lo(int qb) const { return qb * c.block_size; }
  int q_hi(int qb) const { return std::min(seq_len, (qb + 1) * c.block_size); }  // exclusive
  int tile_count(int qb, int kb) const {
    int cnt = 0;
    for (int q = q_lo(qb); q < q_hi(qb); ++q)
      for (int k = q_lo(kb); k < q_hi(kb); ++k) cnt += allowed(q, k);
    return cnt;
  }
  int tile_size(int qb, int kb) const { return (q_hi(qb) - q_lo(qb)) * (q_hi(kb) - q_lo(kb)); }
};

std::vector<int> listed(const BlockMask& m, int qb) {
  return {m.q_col_idx.begin() + m.q_row_ptr[qb], m.q_col_idx.begin() + m.q_row_ptr[qb + 1]};
}

using testing_support::describe_pattern;
using testing_support::make_pattern;

// Sweep of configurations (every pattern, causal and not, block multiples and not, edge params).
std::vector<std::pair<AttnPatternConfig, int>> sweep() {
  std::vector<std::pair<AttnPatternConfig, int>> out;
  for (bool causal : {true, false})
    for (int bs : {4, 8})
      for (int n : {1, 7, 32, 37}) {
        out.push_back({make_pattern(AttnPatternKind::kDense, causal, bs), n});
        for (int w : {0, 3, 8, 13, 100}) {
          auto c = make_pattern(AttnPatternKind::kLocal, causal, bs);
          c.window = w;
          out.push_back({c, n});
        }
        for (int r : {0, 1, 2, 50}) {
          auto c = make_pattern(AttnPatternKind::kRandom, causal, bs);
          c.num_random_blocks = r;
          c.seed = 1234 + r;
          out.push_back({c, n});
        }
        for (int s : {1, 2, 3}) {
          auto c = make_pattern(AttnPatternKind::kBlockSparse, causal, bs);
          c.stride_blocks = s;
          out.push_back({c, n});
        }
        for (int g : {0, 1, 2})
          for (int w : {0, 5, 9}) {
            auto c = make_pattern(AttnPatternKind::kBigBird, causal, bs);
            c.num_global_blocks = g;
            c.window = w;
            c.num_random_blocks = 1 + g % 2;
            c.seed = 99;
            out.push_back({c, n});
          }
      }
  return out;
}


// ---- Names and validation -----------------------------------------------------------------------

TEST(AttentionPattern, ParseAndNameRoundTrip) {
  EXPECT_EQ(parse_attn_pattern("dense"), AttnPatternKind::kDense);
  EXPECT_EQ(parse_attn_pattern("local"), AttnPatternKind::kLocal);
  EXPECT_EQ(parse_attn_pattern("random"), AttnPatternKind::kRandom);
  EXPECT_EQ(parse_attn_pattern("block_sparse"), AttnPatternKind::kBlockSparse);
  EXPECT_EQ(parse_attn_pattern("bigbird"), AttnPatternKind::kBigBird);
  for (auto k : {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                 AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird})
    EXPECT_EQ(parse_attn_pattern(attn_pattern_name(k)), k);
}

TEST(AttentionPattern, UnknownNameThrowsUsageErrorListingValidNames) {
  try {
    parse_attn_pattern("sliding");
    FAIL() << "no exception";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.exit_code(), 2);
    for (const char* name : {"sliding", "dense", "local", "random", "block_sparse", "bigbird"})
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
  }
}

TEST(AttentionPattern, InvalidConfigThrows) {
  auto c = make_pattern(AttnPatternKind::kDense, true, 0);
  EXPECT_THROW(build_block_mask(c, 16, 0), UsageError);
  c = make_pattern(AttnPatternKind::kLocal, true, 4);
  c.window = -1;
  EXPECT_THROW(build_block_mask(c, 16, 0), UsageError);
  c = make_pattern(AttnPatternKind::kBlockSparse, false, 4);
  c.stride_blocks = 0;
  EXPECT_THROW(build_block_mask(c, 16, 0), UsageError);
  c = make_pattern(AttnPatternKind::kRandom, false, 4);
  c.num_random_blocks = -2;
  EXPECT_THROW(build_block_mask(c, 16, 0), UsageError);
  c = make_pattern(AttnPatternKind::kBigBird, false, 4);
  c.num_global_blocks = -1;
  EXPECT_THROW(build_block_mask(c, 16, 0), UsageError);
  EXPECT_THROW(build_block_mask(make_pattern(AttnPatternKind::kDense, true, 4), 0, 0), Error);
  EXPECT_THROW(build_block_mask(make_pattern(AttnPatternKind::kDense, true, 4), 16, -1), Error);
}

// ---- Hand-checked lists -------------------------------------------------------------------------

TEST(AttentionPattern, DenseListsEveryBlockCausalLowerTriangle) {
  const auto bi = build_block_mask(make_pattern(AttnPatternKind::kDense, false, 8), 37, 0);  // nb = 5
  ASSERT_EQ(bi.num_blocks, 5);
  for (int qb = 0; qb < 5; ++qb) EXPECT_EQ(listed(bi, qb), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_DOUBLE_EQ(bi.block_density(), 1.0);
  EXPECT_DOUBLE_EQ(bi.element_density(), 1.0);
  const auto ca = build_block_mask(make_pattern(AttnPatternKind::kDense, true, 8), 37, 0);
  for (int qb = 0; qb < 5; ++qb) {
    std::vector<int> expect;
    for (int kb = 0; kb <= qb; ++kb) expect.push_back(kb);
    EXPECT_EQ(listed(ca, qb), expect);
  }
  EXPECT_DOUBLE_EQ(ca.block_density(), 15.0 / 25.0);
  EXPECT_DOUBLE_EQ(ca.element_density(), (37.0 * 38.0 / 2.0) / (37.0 * 37.0));
  // Diagonal tiles are partial (causal), strictly-lower ones full.
  for (int qb = 0; qb < 5; ++qb)
    for (int e = ca.q_row_ptr[qb]; e < ca.q_row_ptr[qb + 1]; ++e)
      EXPECT_EQ(ca.q_is_full[e], ca.q_col_idx[e] < qb ? 1 : 0);
}

TEST(AttentionPattern, BlockSparseStride2Nb4HandChecked) {
  // s = 2: own group {2*(qb/2), 2*(qb/2)+1} plus the last block of every group {1, 3}.
  for (int n : {16, 14}) {  // nb = 4 at b = 4, the last block full or clipped
    auto c = make_pattern(AttnPatternKind::kBlockSparse, false, 4);
    c.stride_blocks = 2;
    auto m = build_block_mask(c, n, 0);
    ASSERT_EQ(m.num_blocks, 4);
    EXPECT_EQ(listed(m, 0), (std::vector<int>{0, 1, 3}));
    EXPECT_EQ(listed(m, 1), (std::vector<int>{0, 1, 3}));
    EXPECT_EQ(listed(m, 2), (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(listed(m, 3), (std::vector<int>{1, 2, 3}));
    for (auto k : m.q_kind) EXPECT_EQ(k, BlockMask::kWhole);
    for (auto f : m.q_is_full) EXPECT_EQ(f, 1);
    c.causal = true;
    m = build_block_mask(c, n, 0);
    EXPECT_EQ(listed(m, 0), (std::vector<int>{0}));
    EXPECT_EQ(listed(m, 1), (std::vector<int>{0, 1}));
    EXPECT_EQ(listed(m, 2), (std::vector<int>{1, 2}));
    EXPECT_EQ(listed(m, 3), (std::vector<int>{1, 2, 3}));
  }
  // The same lists by brute force over positions with the rule restated.
  auto c = make_pattern(AttnPatternKind::kBlockSparse, false, 4);
  c.stride_blocks = 2;
  const auto m = build_block_mask(c, 16, 0);
  for (int qb = 0; qb < 4; ++qb) {
    std::vector<int> expect;
    for (int kb = 0; kb < 4; ++kb) {
      bool any = false;
      for (int q = qb * 4; q < qb * 4 + 4; ++q)
        for (int k = kb * 4; k < kb * 4 + 4; ++k) {
          const int qq = q / 4, kk = k / 4;
          any = any || (qq / 2 == kk / 2 || kk % 2 == 1);
        }
      if (any) expect.push_back(kb);
    }
    EXPECT_EQ(listed(m, qb), expect);
  }
}

TEST(AttentionPattern, LocalHandChecked) {
  auto c = make_pattern(AttnPatternKind::kLocal, true, 4);
  c.window = 5;
  auto m = build_block_mask(c, 16, 0);
  // causal: keys [q-5, q]. qb1 (q 4..7) reaches k >= -1; qb2 (8..11) k >= 3; qb3 (12..15) k >= 7.
  EXPECT_EQ(listed(m, 0), (std::vector<int>{0}));
  EXPECT_EQ(listed(m, 1), (std::vector<int>{0, 1}));
  EXPECT_EQ(listed(m, 2), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(listed(m, 3), (std::vector<int>{1, 2, 3}));
  for (auto k : m.q_kind) EXPECT_EQ(k, BlockMask::kWindow);
  for (auto f : m.q_is_full) EXPECT_EQ(f, 0);  // every tile has a pair too far or in the future
  // allowed pairs: sum over q of (min(q, 5) + 1).
  int count = 0;
  for (int q = 0; q < 16; ++q) count += std::min(q, 5) + 1;
  EXPECT_DOUBLE_EQ(m.element_density(), count / 256.0);

  c.causal = false;
  m = build_block_mask(c, 16, 0);
  EXPECT_EQ(listed(m, 0), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(listed(m, 1), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(listed(m, 2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(listed(m, 3), (std::vector<int>{1, 2, 3}));
  // |q - k| <= 5 holds for every pair of the diagonal tiles (max distance 3): full.
  for (int qb = 0; qb < 4; ++qb)
    for (int e = m.q_row_ptr[qb]; e < m.q_row_ptr[qb + 1]; ++e) EXPECT_EQ(m.q_is_full[e], m.q_col_idx[e] == qb ? 1 : 0);

  // window 0, causal: only the diagonal.
  c.causal = true;
  c.window = 0;
  m = build_block_mask(c, 10, 0);
  for (int qb = 0; qb < m.num_blocks; ++qb) EXPECT_EQ(listed(m, qb), (std::vector<int>{qb}));
  EXPECT_DOUBLE_EQ(m.element_density(), 10.0 / 100.0);
}

TEST(AttentionPattern, CausalNeverListsFutureBlocks) {
  for (const auto& [c, n] : sweep()) {
    if (!c.causal) continue;
    const auto m = build_block_mask(c, n, 2);
    for (int qb = 0; qb < m.num_blocks; ++qb)
      for (int kb : listed(m, qb)) EXPECT_LE(kb, qb) << describe_pattern(c, n);
  }
}

TEST(AttentionPattern, RandomIsDeterministicBySeedAndLayer) {
  auto c = make_pattern(AttnPatternKind::kRandom, false, 4);
  c.num_random_blocks = 3;
  c.seed = 42;
  const int n = 4 * 32;  // nb = 32: C(31, 3) choices per block
  const auto a = build_block_mask(c, n, 5), b = build_block_mask(c, n, 5);
  EXPECT_EQ(a.q_col_idx, b.q_col_idx);
  EXPECT_EQ(a.q_row_ptr, b.q_row_ptr);
  const auto other_layer = build_block_mask(c, n, 6);
  EXPECT_NE(a.q_col_idx, other_layer.q_col_idx);
  auto c2 = c;
  c2.seed = 43;
  EXPECT_NE(a.q_col_idx, build_block_mask(c2, n, 5).q_col_idx);
  // Own block plus exactly r others, the others as the restated Fisher-Yates draws them.
  for (int qb = 0; qb < a.num_blocks; ++qb) {
    const auto l = listed(a, qb);
    ASSERT_EQ(l.size(), 4u);
    std::set<int> expect = ref_random_draw(qb, 32, false, 3, 42, 5);
    expect.insert(qb);
    EXPECT_EQ(std::set<int>(l.begin(), l.end()), expect);
  }
  // The draw is per layer: at least one query block differs between layers 5 and 6.
  int differing = 0;
  for (int qb = 0; qb < 32; ++qb) differing += listed(a, qb) != listed(other_layer, qb);
  EXPECT_GT(differing, 0);
}

TEST(AttentionPattern, RandomWithRAtLeastCandidatesTakesAll) {
  for (bool causal : {false, true}) {
    auto c = make_pattern(AttnPatternKind::kRandom, causal, 4);
    c.num_random_blocks = 4;  // nb = 5: 4 candidates bidirectional, qb candidates causal
    const auto m = build_block_mask(c, 20, 0);
    for (int qb = 0; qb < 5; ++qb) {
      std::vector<int> expect;
      for (int kb = 0; kb < (causal ? qb + 1 : 5); ++kb) expect.push_back(kb);
      EXPECT_EQ(listed(m, qb), expect) << "causal " << causal << " qb " << qb;
    }
  }
  // r = 0: only the own block.
  auto c = make_pattern(AttnPatternKind::kRandom, false, 4);
  c.num_random_blocks = 0;
  const auto m = build_block_mask(c, 20, 0);
  for (int qb = 0; qb < 5; ++qb) EXPECT_EQ(listed(m, qb), (std::vector<int>{qb}));
}

TEST(AttentionPattern, BigBirdGlobalRowsAndColumns) {
  auto c = make_pattern(AttnPatternKind::kBigBird, false, 4);
  c.num_global_blocks = 1;
  c.num_random_blocks = 0;
  c.window = 2;
  const auto m = build_block_mask(c, 24, 0);  // nb = 6
  EXPECT_EQ(listed(m, 0), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  // qb 3 (q 12..15): global kb 0 (kWhole, full), window keys 10..17 -> kb 2, 3, 4 (kWindow).
  EXPECT_EQ(listed(m, 3), (std::vector<int>{0, 2, 3, 4}));
  for (int e = m.q_row_ptr[3]; e < m.q_row_ptr[4]; ++e) {
    EXPECT_EQ(m.q_kind[e], m.q_col_idx[e] == 0 ? BlockMask::kWhole : BlockMask::kWindow);
    EXPECT_EQ(m.q_is_full[e], m.q_col_idx[e] == 0 ? 1 : 0);  // diagonal: max distance 3 > 2
  }
  for (int e = m.q_row_ptr[0]; e < m.q_row_ptr[1]; ++e) EXPECT_EQ(m.q_kind[e], BlockMask::kWhole);
}

// ---- Brute-force reference over a sweep ---------------------------------------------------------

TEST(AttentionPattern, ListsKindsAndFullFlagsMatchBruteForce) {
  for (const auto& [c, n] : sweep()) {
    const int layer = 3;
    const auto m = build_block_mask(c, n, layer);
    const RefPattern ref(c, n, layer);
    ASSERT_EQ(m.num_blocks, ref.nb) << describe_pattern(c, n);
    ASSERT_EQ(m.seq_len, n);
    ASSERT_EQ(m.block_size, c.block_size);
    ASSERT_EQ(static_cast<int>(m.q_row_ptr.size()), ref.nb + 1);
    ASSERT_EQ(m.q_kind.size(), m.q_col_idx.size());
    ASSERT_EQ(m.q_is_full.size(), m.q_col_idx.size());
    for (int qb = 0; qb < ref.nb; ++qb) {
      std::vector<int> expect;
      for (int kb = 0; kb < ref.nb; ++kb)
        if (ref.tile_count(qb, kb) > 0) expect.push_back(kb);
      ASSERT_EQ(listed(m, qb), expect) << describe_pattern(c, n) << " qb " << qb;
      for (int e = m.q_row_ptr[qb]; e < m.q_row_ptr[qb + 1]; ++e) {
        const int kb = m.q_col_idx[e];
        EXPECT_EQ(m.q_kind[e], ref.whole(qb, kb) ? BlockMask::kWhole : BlockMask::kWindow)
            << describe_pattern(c, n) << " qb " << qb << " kb " << kb;
        EXPECT_EQ(m.q_is_full[e] != 0, ref.tile_count(qb, kb) == ref.tile_size(qb, kb))
            << describe_pattern(c, n) << " qb " << qb << " kb " << kb;
      }
    }
  }
}

TEST(AttentionPattern, AllowedAndDensitiesMatchBruteForce) {
  for (const auto& [c, n] : sweep()) {
    const auto m = build_block_mask(c, n, 1);
    const RefPattern ref(c, n, 1);
    int64_t count = 0;
    for (int q = 0; q < n; ++q)
      for (int k = 0; k < n; ++k) {
        ASSERT_EQ(m.allowed(q, k), ref.allowed(q, k)) << describe_pattern(c, n) << " q " << q << " k " << k;
        count += ref.allowed(q, k);
      }
    EXPECT_NEAR(m.element_density(), static_cast<double>(count) / (static_cast<double>(n) * n), 1e-15)
        << describe_pattern(c, n);
    int64_t blocks = 0;
    for (int qb = 0; qb < ref.nb; ++qb)
      for (int kb = 0; kb < ref.nb; ++kb) blocks += ref.tile_count(qb, kb) > 0;
    EXPECT_NEAR(m.block_density(), static_cast<double>(blocks) / (static_cast<double>(ref.nb) * ref.nb), 1e-15)
        << describe_pattern(c, n);
  }
}

TEST(AttentionPattern, ElementDensityAtLongSequence) {
  // Local causal at N = 1000, b = 64, w = 100: count of pairs 0 <= q - k <= 100.
  auto c = make_pattern(AttnPatternKind::kLocal, true, 64);
  c.window = 100;
  const auto m = build_block_mask(c, 1000, 0);
  int64_t count = 0;
  for (int q = 0; q < 1000; ++q) count += std::min(q, 100) + 1;
  EXPECT_DOUBLE_EQ(m.element_density(), static_cast<double>(count) / 1e6);
}

TEST(AttentionPattern, TransposedListsConsistent) {
  for (const auto& [c, n] : sweep()) {
    const auto m = build_block_mask(c, n, 0);
    const int nb = m.num_blocks;
    ASSERT_EQ(static_cast<int>(m.kv_col_ptr.size()), nb + 1) << describe_pattern(c, n);
    ASSERT_EQ(m.kv_row_idx.size(), m.q_col_idx.size());
    ASSERT_EQ(m.kv_entry.size(), m.q_col_idx.size());
    EXPECT_EQ(m.kv_col_ptr[0], 0);
    EXPECT_EQ(m.kv_col_ptr[nb], static_cast<int>(m.nnz_blocks()));
    std::vector<int> seen(m.q_col_idx.size(), 0);
    for (int kb = 0; kb < nb; ++kb) {
      for (int t = m.kv_col_ptr[kb]; t < m.kv_col_ptr[kb + 1]; ++t) {
        const int qb = m.kv_row_idx[t], e = m.kv_entry[t];
        if (t > m.kv_col_ptr[kb]) {
          EXPECT_LT(m.kv_row_idx[t - 1], qb) << describe_pattern(c, n);
        }
        ASSERT_GE(e, m.q_row_ptr[qb]);
        ASSERT_LT(e, m.q_row_ptr[qb + 1]);
        EXPECT_EQ(m.q_col_idx[e], kb);
        ++seen[e];
      }
    }
    for (int s : seen) EXPECT_EQ(s, 1) << describe_pattern(c, n);
  }
}

}  // namespace
}  // namespace smt
