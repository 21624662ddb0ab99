// The per-query-block rule of attention_pattern.h as one function for the host and the device:
// pattern_row(config, seq_len, layer, qb, ...) lists the key blocks of query block qb ascending, each
// with its kind (kWhole / kWindow) and full flag. build_block_mask (CPU) and
// gpu::build_block_mask_on_device (one CUDA thread per query block) both call it, so the two agree
// bit for bit. With null outputs it only counts: the GPU counts every row first and sizes its CSR by a
// prefix sum of the counts, then fills with the same call; the CPU fills one row at a time.
//
// Cost per query block: O(entries + r + num_blocks / 32) with r = num_random_blocks (random, bigbird),
// no allocation. The random draw runs the header's partial Fisher-Yates without materialising the
// candidate list: positions [0, r) live in a[0..r), positions >= r that a swap touched in a small hash
// table; both in caller-provided scratch of random_draw_scratch_words(config, num_blocks) int32 per call.
// Invariants: config validated (validate_attn_pattern), 0 <= qb < num_blocks, seq_len > 0.
#pragma once
#include <cstdint>

#include "core/host_device.h"
#include "core/rng.h"
#include "kernels/attention_pattern.h"

namespace smt::pattern {

SMT_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
SMT_HOST_DEVICE inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

SMT_HOST_DEVICE inline int64_t num_blocks_of(int64_t seq_len, int64_t block_size) {
  return (seq_len + block_size - 1) / block_size;
}

// Clipped tile of (qb, kb): rows [q_lo, q_hi], columns [k_lo, k_hi] (inclusive).
struct Tile {
  int64_t q_lo, q_hi, k_lo, k_hi;
};

SMT_HOST_DEVICE inline Tile tile_of(int64_t qb, int64_t kb, int64_t bs, int64_t seq_len) {
  return {qb * bs, min64(seq_len, (qb + 1) * bs) - 1, kb * bs, min64(seq_len, (kb + 1) * bs) - 1};
}

// Does the position rule (causal, window for kWindow) allow at least one pair of the tile?
SMT_HOST_DEVICE inline bool tile_has_pair(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_lo > t.q_hi) return false;  // every k > every q
  if (!window_kind) return true;
  // Smallest |q - k| over pairs satisfying the causal rule.
  const int64_t min_dist =
      causal ? max64(0, t.q_lo - t.k_hi)  // pairs with k <= q exist (checked above)
             : max64(0, max64(t.k_lo - t.q_hi, t.q_lo - t.k_hi));
  return min_dist <= window;
}

// Does the position rule allow every pair of the tile?
SMT_HOST_DEVICE inline bool tile_is_full(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_hi > t.q_lo) return false;  // some k > q
  if (!window_kind) return true;
  return max64(t.q_hi - t.k_lo, t.k_hi - t.q_lo) <= window;
}

SMT_HOST_DEVICE inline bool uses_random_blocks(AttnPatternKind kind) {
  return kind == AttnPatternKind::kRandom || kind == AttnPatternKind::kBigBird;
}
SMT_HOST_DEVICE inline bool uses_window(AttnPatternKind kind) {
  return kind == AttnPatternKind::kLocal || kind == AttnPatternKind::kBigBird;
}

// Slots of the open-addressing table of touched positions >= r: a power of two >= 2 r (load <= 1/2).
SMT_HOST_DEVICE inline int64_t draw_table_slots(int64_t r) {
  int64_t slots = 2;
  while (slots < 2 * r) slots *= 2;
  return slots;
}

// Words of the bitmap of drawn key blocks (one bit per key block).
SMT_HOST_DEVICE inline int64_t draw_bitmap_words(int64_t num_blocks) { return (num_blocks + 31) / 32; }

// int32 words of scratch one pattern_row call needs: r + 2 draw_table_slots(r) + draw_bitmap_words
// for the patterns with random blocks when some query block materialises a draw (0 < r < n,
// n <= num_blocks - 1), else 0.
SMT_HOST_DEVICE inline int64_t random_draw_scratch_words(const AttnPatternConfig& c, int64_t num_blocks) {
  const int64_t r = c.num_random_blocks;
  if (!uses_random_blocks(c.kind) || r <= 0 || r >= num_blocks - 1) return 0;
  return r + 2 * draw_table_slots(r) + draw_bitmap_words(num_blocks);
}

// Index of the lowest set bit of x != 0.
SMT_HOST_DEVICE inline int lowest_bit(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x)) - 1;
#else
  return __builtin_ctz(x);
#endif
}

// Smallest set bit >= from in a bitmap of num_bits bits (num_bits if none).
SMT_HOST_DEVICE inline int64_t next_set_bit(const uint32_t* bitmap, int64_t num_bits, int64_t from) {
  if (from >= num_bits) return num_bits;
  const int64_t words = (num_bits + 31) / 32;
  int64_t w = from >> 5;
  uint32_t bits = bitmap[w] & (~0u << (from & 31));
  while (bits == 0) {
    if (++w >= words) return num_bits;
    bits = bitmap[w];
  }
  const int64_t bit = (w << 5) + lowest_bit(bits);
  return bit < num_bits ? bit : num_bits;
}

// Candidate p (0-based) of query block qb: the key blocks {kb != qb, kb < qb if causal} ascending.
SMT_HOST_DEVICE inline int64_t random_candidate(int64_t p, int64_t qb) { return p < qb ? p : p + 1; }

// The random draw of the header for query block qb: candidates {kb != qb, kb < qb if causal}, n of
// them; when r >= n every candidate is drawn and -1 is returned (nothing written); else the partial
// Fisher-Yates with Rng(seed, (layer << 32) | qb) -- for i in [0, r): j = i + rng.below(n - i);
// swap(c[i], c[j]) -- takes c[0..r), r is returned and the drawn key blocks are the set bits of the
// bitmap draw_bitmap(scratch, r). scratch holds random_draw_scratch_words words: [0, r) the positions
// < r, then the keys and the values of an open-addressing table (linear probing, key -1 = empty) of the
// touched positions >= r (each swap touches at most one such position: at most r keys), then the bitmap.
SMT_HOST_DEVICE inline uint32_t* draw_bitmap(int32_t* scratch, int64_t r) {
  return reinterpret_cast<uint32_t*>(scratch + r + 2 * draw_table_slots(r));
}
SMT_HOST_DEVICE inline int64_t draw_random_blocks(int64_t qb, int64_t num_blocks, bool causal, int64_t r,
                                                  uint64_t seed, int64_t layer, int32_t* scratch) {
  const int64_t n = causal ? qb : num_blocks - 1;
  if (r >= n) return -1;
  if (r <= 0) return 0;  // no scratch is given for r = 0
  const int64_t slots = draw_table_slots(r);
  int32_t* a = scratch;
  int32_t* keys = scratch + r;
  int32_t* vals = scratch + r + slots;
  for (int64_t p = 0; p < r; ++p) a[p] = static_cast<int32_t>(random_candidate(p, qb));
  for (int64_t s = 0; s < slots; ++s) keys[s] = -1;
  Rng rng(seed, (static_cast<uint64_t>(layer) << 32) | static_cast<uint64_t>(qb));
  for (int64_t i = 0; i < r; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
    if (j < r) {
      const int32_t t = a[i];
      a[i] = a[j];
      a[j] = t;
      continue;
    }
    int64_t slot = j & (slots - 1);
    while (keys[slot] != -1 && keys[slot] != j) slot = (slot + 1) & (slots - 1);
    const int32_t value_j = keys[slot] == j ? vals[slot] : static_cast<int32_t>(random_candidate(j, qb));
    keys[slot] = static_cast<int32_t>(j);
    vals[slot] = a[i];
    a[i] = value_j;
  }
  uint32_t* bitmap = draw_bitmap(scratch, r);
  for (int64_t w = 0; w < draw_bitmap_words(num_blocks); ++w) bitmap[w] = 0;
  for (int64_t p = 0; p < r; ++p) bitmap[a[p] >> 5] |= 1u << (a[p] & 31);
  return r;
}

// The entries of query block qb, ascending in kb: writes cols[i], kinds[i] (BlockMask::EntryKind) and
// fulls[i] (1 = the position rule allows every pair of the clipped tile) for i in [0, count) when the
// pointers are non-null, and returns count. The kind and list rules are those of attention_pattern.h:
// an entry is kWhole if a whole-block rule (dense, own block, random draw, block_sparse, bigbird
// global) takes it, else kWindow if the local window reaches it; causal lists no kb > qb; an entry whose
// position rule allows no pair is left out.
SMT_HOST_DEVICE inline int pattern_row(const AttnPatternConfig& c, int seq_len, int layer, int qb, int32_t* scratch,
                                       int32_t* cols, uint8_t* kinds, uint8_t* fulls) {
  const int64_t bs = c.block_size, n_tokens = seq_len, q = qb;
  const int64_t nb = num_blocks_of(n_tokens, bs);
  const bool causal = c.causal;
  const int64_t window = c.window;
  const int64_t end = causal ? q + 1 : nb;  // listed kb < end

  // Window: key blocks holding some k with |q - k| <= window for some q of the block (causal: k <= q).
  int64_t w_lo = nb, w_hi = -1;
  if (uses_window(c.kind)) {
    const Tile t = tile_of(q, 0, bs, n_tokens);
    w_lo = max64(0, t.q_lo - window) / bs;
    w_hi = (causal ? t.q_hi : min64(n_tokens - 1, t.q_hi + window)) / bs;
  }
  // Random draw: all candidates (drawn < 0) or the set bits of a bitmap (drawn >= 0).
  int64_t drawn = 0;
  if (uses_random_blocks(c.kind)) drawn = draw_random_blocks(q, nb, causal, c.num_random_blocks, c.seed, layer, scratch);
  const uint32_t* drawn_bits = drawn > 0 ? draw_bitmap(scratch, drawn) : nullptr;
  // Smallest drawn block >= kb (nb if none).
  auto next_drawn = [&](int64_t kb) -> int64_t {
    if (drawn < 0) {
      const int64_t k = kb == q ? kb + 1 : kb;
      return (causal && k >= q) || k >= nb ? nb : k;
    }
    return drawn == 0 ? nb : next_set_bit(drawn_bits, nb, kb);
  };
  // Smallest kWhole block >= kb (nb if none).
  auto next_whole = [&](int64_t kb) -> int64_t {
    switch (c.kind) {
      case AttnPatternKind::kDense:
        return kb;
      case AttnPatternKind::kLocal:
        return nb;
      case AttnPatternKind::kRandom:
        return min64(q >= kb ? q : nb, next_drawn(kb));
      case AttnPatternKind::kBlockSparse: {
        const int64_t s = c.stride_blocks, group_lo = (q / s) * s, group_hi = group_lo + s;
        if (kb >= group_lo && kb < group_hi) return kb;
        const int64_t group_last = kb + (s - 1 - kb % s);  // smallest >= kb with kb % s == s - 1
        return kb < group_lo ? min64(group_lo, group_last) : group_last;
      }
      case AttnPatternKind::kBigBird: {
        const int64_t g = c.num_global_blocks;
        if (q < g || kb < g) return kb;
        return next_drawn(kb);
      }
    }
    return nb;
  };

  int count = 0;
  for (int64_t kb = 0;; ++kb) {
    const int64_t whole = next_whole(kb);
    const int64_t windowed = kb <= w_hi ? max64(kb, w_lo) : nb;
    kb = min64(whole, windowed);
    if (kb >= end) break;
    const bool window_kind = whole != kb;
    const Tile t = tile_of(q, kb, bs, n_tokens);
    if (!tile_has_pair(t, causal, window_kind, window)) continue;
    if (cols != nullptr) {
      cols[count] = static_cast<int32_t>(kb);
      kinds[count] = static_cast<uint8_t>(window_kind ? BlockMask::kWindow : BlockMask::kWhole);
      fulls[count] = tile_is_full(t, causal, window_kind, window) ? 1 : 0;
    }
    ++count;
  }
  return count;
}

}  // namespace smt::pattern
