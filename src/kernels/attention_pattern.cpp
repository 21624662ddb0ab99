// Builds BlockMask (per query block: key blocks, kind, full/partial; plus the transposed lists)
// exactly by the rules of attention_pattern.h, which a PyTorch twin reimplements.
// Invariants: lists ascending, no entry without an allowed pair, causal never lists kb > qb.
#include "kernels/attention_pattern.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace smt {

namespace {

constexpr const char* kPatternNames[] = {"dense", "local", "random", "block_sparse", "bigbird"};
constexpr AttnPatternKind kPatternKinds[] = {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                                             AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird};

// Clipped tile of (qb, kb): rows [q_lo, q_hi], columns [k_lo, k_hi] (inclusive).
struct Tile {
  int64_t q_lo, q_hi, k_lo, k_hi;
};

Tile tile_of(int64_t qb, int64_t kb, int64_t bs, int64_t seq_len) {
  return {qb * bs, std::min(seq_len, (qb + 1) * bs) - 1, kb * bs, std::min(seq_len, (kb + 1) * bs) - 1};
}

// Does the position rule (causal, window for kWindow) allow at least one pair of the tile?
bool tile_has_pair(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_lo > t.q_hi) return false;  // every k > every q
  if (!window_kind) return true;
  // Smallest |q - k| over pairs satisfying the causal rule.
  int64_t min_dist;
  if (causal) {
    min_dist = std::max<int64_t>(0, t.q_lo - t.k_hi);  // pairs with k <= q exist (checked above)
  } else {
    min_dist = std::max<int64_t>({0, t.k_lo - t.q_hi, t.q_lo - t.k_hi});
  }
  return min_dist <= window;
}

// Does the position rule allow every pair of the tile?
bool tile_is_full(const Tile& t, bool causal, bool window_kind, int64_t window) {
  if (causal && t.k_hi > t.q_lo) return false;  // some k > q
  if (!window_kind) return true;
  const int64_t max_dist = std::max(t.q_hi - t.k_lo, t.k_hi - t.q_lo);
  return max_dist <= window;
}

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

// The random draw of the header: candidates {kb != qb, kb < qb if causal}; all of them when
// r >= n, else a partial Fisher-Yates with Rng(seed, (layer << 32) | qb).
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

void validate(const AttnPatternConfig& c, int seq_len, int layer_idx) {
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

}  // namespace

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
  validate(config, seq_len, layer_idx);
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
    // Key blocks holding some k with |q - k| <= window for some q of the block (causal: k <= q).
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
        mark_window_range(qb);  // only fills blocks not already kWhole
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
