// Attention patterns as data: per query block, the list of key blocks it visits (CSR), each
// marked full (every pair allowed) or partial (the element rule must be applied), plus the
// transposed lists (per key block, the query blocks) for the backward. Built once per
// (pattern config, sequence length, layer) and shared by forward and backward, CPU and GPU.
//
// Element rule, for query position q and key position k (both < seq_len):
//   allowed(q,k) = block_rule(qb,kb) && (!causal || k <= q) && key_valid[k]
// where an entry kind says how the block got in:
//   kWhole  : the whole key block is in (dense, random, block_sparse, bigbird global/random)
//   kWindow : only through the local window: |q - k| <= window (and causal as above)
// Partial = some pair inside the (qb, kb) tile (clipped to seq_len) is not allowed by the
// position rules (causal, window, sequence end). Key padding is applied on top, per batch row.
//
// Block lists per pattern (nb = num_blocks; with causal, a key block kb > qb is never listed,
// and an entry whose element rule allows no pair at all is not listed):
//   dense        : every kb, kWhole.
//   local        : every kb holding some k with |q - k| <= window for some q in qb, kWindow.
//   random       : own block qb, kWhole, plus r blocks drawn from the candidates
//                  {kb != qb, and kb < qb if causal} (ascending list c, n = |c|): if r >= n all of
//                  them, else partial Fisher-Yates with Rng(seed, stream = (layer << 32) | qb):
//                  for i in [0, r): j = i + rng.below(n - i); swap(c[i], c[j]); take c[0..r).
//   block_sparse : Sparse-Transformer "fixed" with s = stride_blocks: kb with kb / s == qb / s,
//                  or kb % s == s - 1; kWhole.
//   bigbird      : union of: global (qb < g: every kb; kb < g for every qb), the random draw
//                  above (without the own-block rule), all kWhole; and the local window, kWindow.
//                  An entry that is both kWhole and kWindow is kWhole.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace smt {

enum class AttnPatternKind { kDense, kLocal, kRandom, kBlockSparse, kBigBird };

AttnPatternKind parse_attn_pattern(const std::string& name);  // throws UsageError on unknown
std::string attn_pattern_name(AttnPatternKind kind);

struct AttnPatternConfig {
  AttnPatternKind kind = AttnPatternKind::kDense;
  bool causal = true;
  int block_size = 64;          // b: tokens per block (queries and keys)
  int window = 128;             // local, bigbird: tokens each side (causal: only the past)
  int num_random_blocks = 2;    // random, bigbird: r key blocks per query block (besides its own)
  int stride_blocks = 4;        // block_sparse: s blocks per stride group
  int num_global_blocks = 1;    // bigbird: the first g blocks attend to and are attended by all
  uint64_t seed = 0;            // random blocks: Philox(seed, layer, query block)
};

struct BlockMask {
  enum EntryKind : uint8_t { kWhole = 0, kWindow = 1 };

  AttnPatternConfig config;
  int seq_len = 0;
  int block_size = 0;
  int num_blocks = 0;  // ceil(seq_len / block_size), same for queries and keys

  // Per query block qb: key blocks q_col_idx[q_row_ptr[qb] .. q_row_ptr[qb+1]) ascending.
  std::vector<int32_t> q_row_ptr;   // [num_blocks + 1]
  std::vector<int32_t> q_col_idx;   // [nnz]
  std::vector<uint8_t> q_kind;      // [nnz] EntryKind
  std::vector<uint8_t> q_is_full;   // [nnz] 1 = no element mask needed (ignoring key padding)

  // Transposed: per key block kb, query blocks kv_row_idx[kv_col_ptr[kb] .. ) ascending, and
  // kv_entry[...] = index of the same entry in the q_* arrays.
  std::vector<int32_t> kv_col_ptr;  // [num_blocks + 1]
  std::vector<int32_t> kv_row_idx;  // [nnz]
  std::vector<int32_t> kv_entry;    // [nnz]

  int64_t nnz_blocks() const { return static_cast<int64_t>(q_col_idx.size()); }
  // Element-level rule (without key padding) for positions q, k in [0, seq_len).
  bool allowed(int q, int k) const;
  // Fraction of the num_blocks^2 block pairs that are visited.
  double block_density() const;
  // Fraction of the seq_len^2 pairs allowed (exact count).
  double element_density() const;
};

// Throws UsageError for a bad config (block_size, window, num_random_blocks, stride_blocks,
// num_global_blocks out of range) and Error for seq_len <= 0 or layer_idx < 0.
void validate_attn_pattern(const AttnPatternConfig& config, int seq_len, int layer_idx);

// layer_idx seeds the random blocks (each layer draws its own). The per-query-block lists come from
// pattern::pattern_row (attention_pattern_rule.h), which gpu::build_block_mask_on_device shares.
BlockMask build_block_mask(const AttnPatternConfig& config, int seq_len, int layer_idx);

}  // namespace smt
