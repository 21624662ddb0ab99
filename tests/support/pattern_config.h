// Attention-pattern configurations for the pattern tests (CPU builder, shared rule, GPU builder):
// a config from kind, causality and block size, and a one-line description for failure messages.
#pragma once
#include <string>

#include "kernels/attention_pattern.h"

namespace smt::testing_support {

inline AttnPatternConfig make_pattern(AttnPatternKind kind, bool causal, int block_size) {
  AttnPatternConfig c;
  c.kind = kind;
  c.causal = causal;
  c.block_size = block_size;
  return c;
}

// "local causal N=300 b=16 w=64 r=0 s=0 g=0 seed=1[ layer=2]" (layer < 0: omitted).
inline std::string describe_pattern(const AttnPatternConfig& c, int n, int layer = -1) {
  return attn_pattern_name(c.kind) + (c.causal ? " causal" : " bidir") + " N=" + std::to_string(n) +
         " b=" + std::to_string(c.block_size) + " w=" + std::to_string(c.window) +
         " r=" + std::to_string(c.num_random_blocks) + " s=" + std::to_string(c.stride_blocks) +
         " g=" + std::to_string(c.num_global_blocks) + " seed=" + std::to_string(c.seed) +
         (layer >= 0 ? " layer=" + std::to_string(layer) : std::string());
}

}  // namespace smt::testing_support
