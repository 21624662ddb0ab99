// The tile schedule of the flash attention kernels (src/kernels/cuda/flash_attention.cu), host and device:
// which key sub-tiles a query tile visits (forward lists), which query sub-tiles a key tile visits (transposed
// lists), and which visited sub-tiles need the element mask. Shared with a CPU unit test
// (tests/unit/test_flash_tiles.cpp) that checks, for every pattern, that the visited sub-tiles cover every
// allowed pair exactly once and that a sub-tile left unmasked holds only allowed pairs.
// Plain C++ (no CUDA headers); under nvcc every function is __host__ __device__.
#pragma once
#include <cstdint>

#include "kernels/attention_pattern.h"

#if defined(__CUDACC__)
#define SMT_FLASH_HD __host__ __device__ __forceinline__
#else
#define SMT_FLASH_HD inline
#endif

namespace smt::flash {

constexpr int kTileKeys = 64;  // key sub-tile of the forward and dq kernels
constexpr int kBwdM = 64;      // query sub-tile of the dk/dv kernel

// Rows per CTA tile (queries in the forward / dq kernels, keys in the dk/dv kernel): 16 per warp, 8 warps when
// the block size allows 128-row tiles, else 4 (block sizes are multiples of 64).
constexpr int warps_for_block(int block_size) { return block_size % 128 == 0 ? 8 : 4; }

// The BlockMask lists as the kernels read them (device pointers on the GPU, host pointers in the CPU test).
struct MaskArgs {
  const int32_t* q_row_ptr;
  const int32_t* q_col_idx;
  const uint8_t* q_kind;
  const uint8_t* q_is_full;
  const int32_t* kv_col_ptr;
  const int32_t* kv_row_idx;
  const int32_t* kv_entry;
  const uint64_t* key_bits;  // [B][key_words] validity of 64-key groups; null: every key < N valid
  int key_words;             // ceil(N / 64)
  int N, bs, causal, window;
};

SMT_FLASH_HD int imin(int a, int b) { return a < b ? a : b; }
SMT_FLASH_HD int imax(int a, int b) { return a > b ? a : b; }

// Position rule of one entry on the rectangle queries [q_lo, q_hi] x keys [k_lo, k_hi] (inclusive, clipped to
// N): 0 = no pair allowed, 1 = some, 2 = all. Allowed: (!causal || k <= q) && (!win || |q - k| <= w).
SMT_FLASH_HD int tile_relation(int q_lo, int q_hi, int k_lo, int k_hi, bool causal, bool win, int w) {
  if (!win) {
    if (!causal) return 2;
    if (k_lo > q_hi) return 0;
    return k_hi <= q_lo ? 2 : 1;
  }
  const int up = causal ? 0 : w;  // allowed band: q - w <= k <= q + up
  if (imax(q_lo, k_lo - up) > imin(q_hi, k_hi + w)) return 0;
  return (q_hi - k_lo <= w && k_hi - q_lo <= up) ? 2 : 1;
}

SMT_FLASH_HD bool pair_allowed(int qpos, int kpos, bool causal, bool win, int w) {
  if (causal && kpos > qpos) return false;
  if (win && (qpos > kpos ? qpos - kpos : kpos - qpos) > w) return false;
  return true;
}

SMT_FLASH_HD bool is_window(const MaskArgs& m, int e) {
  return m.q_kind[e] == static_cast<uint8_t>(BlockMask::kWindow);
}

// Validity bits of the 64 keys starting at k0 (k0 % 64 == 0, k0 < N): bit j = key k0 + j valid and < N.
SMT_FLASH_HD uint64_t key_word(const MaskArgs& m, int b, int k0) {
  if (m.key_bits != nullptr) return m.key_bits[int64_t(b) * m.key_words + (k0 >> 6)];
  const int n = m.N - k0;
  return n >= 64 ? ~0ull : ((1ull << n) - 1ull);
}

// Forward lists: first visited key sub-tile at or after (e, s) for the query rows [q_lo, q_hi]; sub-tile s of
// entry e holds keys [q_col_idx[e] * bs + 64 s, + 64). Returns false when the list is exhausted.
SMT_FLASH_HD bool seek_key_tile(const MaskArgs& m, int e_end, int q_lo, int q_hi, int& e, int& s) {
  const int subs = m.bs / kTileKeys;
  for (; e < e_end; ++e, s = 0) {
    const int kb = m.q_col_idx[e];
    const bool full = m.q_is_full[e] != 0;
    const bool win = is_window(m, e);
    for (; s < subs; ++s) {
      const int k_lo = kb * m.bs + s * kTileKeys;
      if (k_lo >= m.N) break;
      if (full) return true;
      const int k_hi = imin(k_lo + kTileKeys, m.N) - 1;
      if (tile_relation(q_lo, q_hi, k_lo, k_hi, m.causal != 0, win, m.window) != 0) return true;
    }
  }
  return false;
}

// Transposed lists: first visited query sub-tile at or after (x, s) for the keys [k_lo, k_hi]; sub-tile s of
// position x holds queries [kv_row_idx[x] * bs + 64 s, + 64).
SMT_FLASH_HD bool seek_query_tile(const MaskArgs& m, int x_end, int k_lo, int k_hi, int& x, int& s) {
  const int subs = m.bs / kBwdM;
  for (; x < x_end; ++x, s = 0) {
    const int qb = m.kv_row_idx[x];
    const int e = m.kv_entry[x];
    const bool full = m.q_is_full[e] != 0;
    const bool win = is_window(m, e);
    for (; s < subs; ++s) {
      const int q_lo = qb * m.bs + s * kBwdM;
      if (q_lo >= m.N) break;
      if (full) return true;
      const int q_hi = imin(q_lo + kBwdM, m.N) - 1;
      if (tile_relation(q_lo, q_hi, k_lo, k_hi, m.causal != 0, win, m.window) != 0) return true;
    }
  }
  return false;
}

// Relation (0, 1, 2 as tile_relation) of a visited sub-tile of entry e: full entries are 2 without a look.
SMT_FLASH_HD int entry_tile_relation(const MaskArgs& m, int e, int q_lo, int q_hi, int k_lo, int k_hi) {
  if (m.q_is_full[e] != 0) return 2;
  return tile_relation(q_lo, q_hi, k_lo, k_hi, m.causal != 0, is_window(m, e), m.window);
}

}  // namespace smt::flash
