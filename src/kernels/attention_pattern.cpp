// Builds BlockMask (per query block: key blocks, kind, full/partial; plus the transposed lists)
// exactly by the rules of attention_pattern.h, which a PyTorch twin reimplements. The per-query-block
// rule is pattern::pattern_row (attention_pattern_rule.h), shared with the CUDA builder.
// Invariants: lists ascending, no entry without an allowed pair, causal never lists kb > qb.
#include "kernels/attention_pattern.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/attention_pattern_rule.h"

namespace smt {

namespace {

constexpr const char* kPatternNames[] = {"dense", "local", "random", "block_sparse", "bigbird"};
constexpr AttnPatternKind kPatternKinds[] = {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                                             AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird};

using pattern::Tile;
using pattern::tile_of;

// Allowed pairs of the tile under the position rule (O(rows) for partial tiles).
int64_t tile_count(const Tile& t, bool causal, bool window_kind, int64_t window, bool full) {
  const int64_t rows = t.q_hi - t.q_lo + 1, cols = t.k_hi - t.k_lo + 1;
  if (full) return rows * cols;
  int64_t count = 0;
  for (int64_t q = t.q_lo; q <= t.q_hi; ++q) {
    int64_t lo = t.k_lo, hi = t.k_hi;
    if (causal) hi = std::min(hi, q);
    if (window_kind) {
      lo = std::max(lo, q - window);
      hi = std::min(hi, q + window);
    }
    if (hi >= lo) count += hi - lo + 1;
  }
  return count;
}

}  // namespace

void validate_attn_pattern(const AttnPatternConfig& c, int seq_len, int layer_idx) {
  const std::string name = attn_pattern_name(c.kind);
  SMT_USAGE_CHECK(c.block_size > 0, "attention pattern ", name, ": block_size must be > 0, got ", c.block_size);
  SMT_CHECK(seq_len > 0, "build_block_mask: seq_len must be > 0, got ", seq_len);
  SMT_CHECK(layer_idx >= 0, "build_block_mask: layer_idx must be >= 0, got ", layer_idx);
  const bool uses_window = c.kind == AttnPatternKind::kLocal || c.kind == AttnPatternKind::kBigBird;
  const bool uses_random = c.kind == AttnPatternKind::kRandom || c.kind == AttnPatternKind::kBigBird;
  if (uses_window) SMT_USAGE_CHECK(c.window >= 0, "attention pattern ", name, ": window must be >= 0, got ", c.window);
  if (uses_random)
    SMT_USAGE_CHECK(c.num_random_blocks >= 0, "attention pattern ", name, ": num_random_blocks must be >= 0, got ",
                    c.num_random_blocks);
  if (c.kind == AttnPatternKind::kBlockSparse)
    SMT_USAGE_CHECK(c.stride_blocks > 0, "attention pattern ", name, ": stride_blocks must be > 0, got ",
                    c.stride_blocks);
  if (c.kind == AttnPatternKind::kBigBird)
    SMT_USAGE_CHECK(c.num_global_blocks >= 0, "attention pattern ", name, ": num_global_blocks must be >= 0, got ",
                    c.num_global_blocks);
}

AttnPatternKind parse_attn_pattern(const std::string& name) {
  for (size_t i = 0; i < std::size(kPatternNames); ++i)
    if (name == kPatternNames[i]) return kPatternKinds[i];
  std::string valid;
  for (size_t i = 0; i < std::size(kPatternNames); ++i) valid += (i ? ", " : "") + std::string(kPatternNames[i]);
  throw UsageError("unknown attention pattern '" + name + "' (valid: " + valid + ")");
}

std::string attn_pattern_name(AttnPatternKind kind) {
  for (size_t i = 0; i < std::size(kPatternKinds); ++i)
    if (kind == kPatternKinds[i]) return kPatternNames[i];
  throw Error("attn_pattern_name: invalid AttnPatternKind " + std::to_string(static_cast<int>(kind)));
}

bool BlockMask::allowed(int q, int k) const {
  if (q < 0 || k < 0 || q >= seq_len || k >= seq_len) return false;
  if (config.causal && k > q) return false;
  const int qb = q / block_size, kb = k / block_size;
  const auto first = q_col_idx.begin() + q_row_ptr[qb], last = q_col_idx.begin() + q_row_ptr[qb + 1];
  const auto it = std::lower_bound(first, last, kb);
  if (it == last || *it != kb) return false;
  const size_t e = static_cast<size_t>(it - q_col_idx.begin());
  if (q_kind[e] == kWindow && std::abs(static_cast<int64_t>(q) - k) > config.window) return false;
  return true;
}

double BlockMask::block_density() const {
  if (num_blocks == 0) return 0.0;
  return static_cast<double>(nnz_blocks()) / (static_cast<double>(num_blocks) * num_blocks);
}

double BlockMask::element_density() const {
  if (seq_len == 0) return 0.0;
  int64_t count = 0;
  for (int qb = 0; qb < num_blocks; ++qb) {
    for (int32_t e = q_row_ptr[qb]; e < q_row_ptr[qb + 1]; ++e) {
      const Tile t = tile_of(qb, q_col_idx[e], block_size, seq_len);
      count += tile_count(t, config.causal, q_kind[e] == kWindow, config.window, q_is_full[e] != 0);
    }
  }
  return static_cast<double>(count) / (static_cast<double>(seq_len) * seq_len);
}

BlockMask build_block_mask(const AttnPatternConfig& config, int seq_len, int layer_idx) {
  validate_attn_pattern(config, seq_len, layer_idx);
  BlockMask m;
  m.config = config;
  m.seq_len = seq_len;
  m.block_size = config.block_size;
  const int64_t nb = pattern::num_blocks_of(seq_len, config.block_size);
  m.num_blocks = static_cast<int>(nb);

  // The shared rule (attention_pattern_rule.h), one fill pass per query block into a row buffer (the
  // GPU counts first to size its lists; the CPU appends instead).
  std::vector<int32_t> scratch(static_cast<size_t>(pattern::random_draw_scratch_words(config, nb)));
  std::vector<int32_t> row_cols(nb);
  std::vector<uint8_t> row_kinds(nb), row_fulls(nb);
  m.q_row_ptr.assign(nb + 1, 0);
  for (int64_t qb = 0; qb < nb; ++qb) {
    const int count = pattern::pattern_row(config, seq_len, layer_idx, static_cast<int>(qb), scratch.data(),
                                           row_cols.data(), row_kinds.data(), row_fulls.data());
    SMT_CHECK(static_cast<int64_t>(m.q_col_idx.size()) + count <= INT32_MAX,
              "build_block_mask: more than 2^31 - 1 block entries (at query block ", qb, ")");
    m.q_col_idx.insert(m.q_col_idx.end(), row_cols.begin(), row_cols.begin() + count);
    m.q_kind.insert(m.q_kind.end(), row_kinds.begin(), row_kinds.begin() + count);
    m.q_is_full.insert(m.q_is_full.end(), row_fulls.begin(), row_fulls.begin() + count);
    m.q_row_ptr[qb + 1] = static_cast<int32_t>(m.q_col_idx.size());
  }

  // Transposed lists by counting sort over kb; iterating qb ascending keeps each column ascending.
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

}  // namespace smt
