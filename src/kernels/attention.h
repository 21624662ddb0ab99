// Block-sparse multi-head attention on the CPU, FlashAttention-style: per (batch, head,
// query block), visit only the key blocks of the BlockMask, online softmax in fp32, save the
// log-sum-exp. Never forms an N x N matrix: extra memory is O(block_size^2) per thread.
// Shapes: q, k, v, out, dout [B, N, H, hd] (i.e. [T, H*hd]); lse [B, H, N];
// key_valid [B, N] (1 = real token, 0 = padding; nullable = all valid).
// A query row with no allowed key gets out = 0 and lse = -inf, and no gradient.
#pragma once
#include <cstdint>

#include "kernels/attention_pattern.h"

namespace smt::cpu {

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_valid, const BlockMask& mask, int64_t B, int64_t H, int64_t hd,
                       float scale);
// dq, dk, dv += ... ; needs out and lse of the forward.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_valid,
                        const BlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale);

// Naive reference (tests only): full masked softmax per row, O(N^2) memory per row block.
void attention_forward_naive(float* out, const float* q, const float* k, const float* v, const uint8_t* key_valid,
                             const BlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale);

}  // namespace smt::cpu
