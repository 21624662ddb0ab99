// The tile schedule of the GPU flash attention kernels (kernels/flash_tiles.h), run on the CPU over the
// BlockMask lists of every pattern: the key sub-tiles visited per query tile (forward and dq kernels) and the
// query sub-tiles visited per key tile (dk/dv kernel) must cover every allowed pair (BlockMask::allowed and
// key padding) exactly once; a sub-tile the kernels leave unmasked must hold only allowed pairs; and on a
// masked sub-tile the kernels' element rule must agree with BlockMask::allowed pair by pair.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/attention_pattern.h"
#include "kernels/flash_tiles.h"

namespace smt {
namespace {

using flash::MaskArgs;

struct Schedule {
  const BlockMask& mask;
  std::vector<uint8_t> valid;     // [B, N]
  std::vector<uint64_t> bits;     // [B, words], as flash_key_bits_kernel builds them
  MaskArgs args;
  int B;

  Schedule(const BlockMask& m, const std::vector<uint8_t>& key_valid, int num_batches)
      : mask(m), valid(key_valid), B(num_batches) {
    const int N = m.seq_len, words = (N + 63) / 64;
    bits.assign(size_t(B) * words, 0);
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < N; ++k)
        if (valid[size_t(b) * N + k]) bits[size_t(b) * words + k / 64] |= 1ull << (k % 64);
    args = MaskArgs{m.q_row_ptr.data(), m.q_col_idx.data(), m.q_kind.data(),    m.q_is_full.data(),
                    m.kv_col_ptr.data(), m.kv_row_idx.data(), m.kv_entry.data(), bits.data(),
                    words,               N,                   m.block_size,      m.config.causal ? 1 : 0,
                    m.config.window};
  }
  bool allowed(int b, int q, int k) const {
    return valid[size_t(b) * mask.seq_len + k] != 0 && mask.allowed(q, k);
  }
};

// Forward / dq schedule (query tiles of 16 * warps rows, key sub-tiles of 64).
void check_forward(const Schedule& sc) {
  const BlockMask& mask = sc.mask;
  const MaskArgs& m = sc.args;
  const int N = mask.seq_len, bs = mask.block_size, BM = 16 * flash::warps_for_block(bs);
  for (int b = 0; b < sc.B; ++b) {
    std::vector<uint8_t> covered(size_t(N) * N, 0);
    for (int qb = 0; qb < mask.num_blocks; ++qb)
      for (int q0 = qb * bs; q0 < std::min(N, (qb + 1) * bs); q0 += BM) {
        const int q_hi = std::min(q0 + BM, N) - 1;
        const int e_end = m.q_row_ptr[qb + 1];
        int e = m.q_row_ptr[qb], s = 0;
        while (flash::seek_key_tile(m, e_end, q0, q_hi, e, s)) {
          const int k0 = m.q_col_idx[e] * bs + s * flash::kTileKeys;
          ASSERT_LT(k0, N);
          const int k_hi = std::min(k0 + flash::kTileKeys, N) - 1;
          const int rel = flash::entry_tile_relation(m, e, q0, q_hi, k0, k_hi);
          ASSERT_NE(rel, 0) << "visited a sub-tile without allowed pairs";
          const uint64_t bits = flash::key_word(m, b, k0);
          const bool need_mask = rel != 2 || bits != ~0ull;
          for (int q = q0; q <= q_hi; ++q)
            for (int k = k0; k <= k_hi; ++k) {
              const bool want = sc.allowed(b, q, k);
              const bool kernel_ok =
                  !need_mask || (((bits >> (k - k0)) & 1ull) != 0 &&
                                 (rel == 2 || flash::pair_allowed(q, k, m.causal != 0, flash::is_window(m, e), m.window)));
              ASSERT_EQ(kernel_ok, want) << "forward b=" << b << " q=" << q << " k=" << k << " need_mask=" << need_mask;
              if (want) ++covered[size_t(q) * N + k];
            }
          ++s;
        }
      }
    for (int q = 0; q < N; ++q)
      for (int k = 0; k < N; ++k)
        ASSERT_EQ(int(covered[size_t(q) * N + k]), sc.allowed(b, q, k) ? 1 : 0) << "forward coverage b=" << b
                                                                                << " q=" << q << " k=" << k;
  }
}

// dk/dv schedule (key tiles of 16 * warps keys, query sub-tiles of 64).
void check_backward(const Schedule& sc) {
  const BlockMask& mask = sc.mask;
  const MaskArgs& m = sc.args;
  const int N = mask.seq_len, bs = mask.block_size, BN = 16 * flash::warps_for_block(bs);
  for (int b = 0; b < sc.B; ++b) {
    std::vector<uint8_t> covered(size_t(N) * N, 0);
    for (int kb = 0; kb < mask.num_blocks; ++kb)
      for (int k0 = kb * bs; k0 < std::min(N, (kb + 1) * bs); k0 += BN) {
        const int k_hi = std::min(k0 + BN, N) - 1;
        bool keys_all_valid = true;
        for (int w = 0; w < BN / 64; ++w)
          keys_all_valid = keys_all_valid && (k0 + 64 * w < N && flash::key_word(m, b, k0 + 64 * w) == ~0ull);
        const int x_end = m.kv_col_ptr[kb + 1];
        int x = m.kv_col_ptr[kb], s = 0;
        while (flash::seek_query_tile(m, x_end, k0, k_hi, x, s)) {
          const int q0 = m.kv_row_idx[x] * bs + s * flash::kBwdM;
          ASSERT_LT(q0, N);
          const int q_hi = std::min(q0 + flash::kBwdM, N) - 1;
          const int e = m.kv_entry[x];
          const int rel = flash::entry_tile_relation(m, e, q0, q_hi, k0, k_hi);
          ASSERT_NE(rel, 0) << "visited a sub-tile without allowed pairs";
          const bool need_mask = rel != 2 || !keys_all_valid;
          for (int q = q0; q <= q_hi; ++q)
            for (int k = k0; k <= k_hi; ++k) {
              const bool want = sc.allowed(b, q, k);
              const bool key_ok = ((flash::key_word(m, b, k & ~63) >> (k & 63)) & 1ull) != 0;
              const bool kernel_ok =
                  !need_mask ||
                  (key_ok && (rel == 2 || flash::pair_allowed(q, k, m.causal != 0, flash::is_window(m, e), m.window)));
              ASSERT_EQ(kernel_ok, want) << "backward b=" << b << " q=" << q << " k=" << k << " need_mask=" << need_mask;
              if (want) ++covered[size_t(q) * N + k];
            }
          ++s;
        }
      }
    for (int q = 0; q < N; ++q)
      for (int k = 0; k < N; ++k)
        ASSERT_EQ(int(covered[size_t(q) * N + k]), sc.allowed(b, q, k) ? 1 : 0) << "backward coverage b=" << b
                                                                                 << " q=" << q << " k=" << k;
  }
}

TEST(FlashTiles, EveryPatternCoversAllowedPairsExactlyOnce) {
  int cases = 0;
  for (AttnPatternKind kind : {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                               AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird})
    for (bool causal : {true, false})
      for (int bs : {64, 128, 256})
        for (int N : {1, 65, 200, 520})
          for (int window : {bs, 100}) {
            AttnPatternConfig cfg;
            cfg.kind = kind;
            cfg.causal = causal;
            cfg.block_size = bs;
            cfg.window = window;
            cfg.num_random_blocks = 1;
            cfg.stride_blocks = 2;
            cfg.num_global_blocks = 1;
            cfg.seed = 5;
            const BlockMask mask = build_block_mask(cfg, N, 2);
            // batch 0: first 10 keys padded (causal: empty rows); batch 1: tail of 37 padded; batch 2: none
            std::vector<uint8_t> valid(size_t(3) * N, 1);
            for (int k = 0; k < std::min(10, N); ++k) valid[k] = 0;
            for (int k = std::max(0, N - 37); k < N; ++k) valid[size_t(N) + k] = 0;
            std::ostringstream what;
            what << attn_pattern_name(kind) << (causal ? " causal" : "") << " bs=" << bs << " N=" << N
                 << " window=" << window;
            SCOPED_TRACE(what.str());
            const Schedule sc(mask, valid, 3);
            check_forward(sc);
            if (HasFatalFailure()) return;
            check_backward(sc);
            if (HasFatalFailure()) return;
            ++cases;
          }
  EXPECT_EQ(cases, 5 * 2 * 3 * 4 * 2);
}

// The rectangle relation against brute force on small rectangles.
TEST(FlashTiles, TileRelationMatchesBruteForce) {
  for (bool causal : {false, true})
    for (bool win : {false, true})
      for (int w : {0, 3, 7})
        for (int q_lo = 0; q_lo < 12; ++q_lo)
          for (int q_hi = q_lo; q_hi < 12; ++q_hi)
            for (int k_lo = 0; k_lo < 12; ++k_lo)
              for (int k_hi = k_lo; k_hi < 12; ++k_hi) {
                int count = 0, total = 0;
                for (int q = q_lo; q <= q_hi; ++q)
                  for (int k = k_lo; k <= k_hi; ++k, ++total) count += flash::pair_allowed(q, k, causal, win, w);
                const int want = count == 0 ? 0 : (count == total ? 2 : 1);
                ASSERT_EQ(flash::tile_relation(q_lo, q_hi, k_lo, k_hi, causal, win, w), want)
                    << "causal=" << causal << " win=" << win << " w=" << w << " q=[" << q_lo << "," << q_hi
                    << "] k=[" << k_lo << "," << k_hi << "]";
              }
}

}  // namespace
}  // namespace smt
