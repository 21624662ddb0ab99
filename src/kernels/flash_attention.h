// Block-sparse FlashAttention-2 on tensor cores (namespace smt::gpu): bf16 q, k, v, out, dout in the
// layout of the fp32 ops, [B, N, H, hd] (row (b, n) holds the H heads one after the other); fp32
// lse [B, H, N] (natural log); key_valid [B, N] device uint8, nullable (1 = real key, 0 = padding).
// Same element rule as gpu::attention_forward (BlockMask::allowed plus key padding); a query row with no
// allowed key gets out = 0, lse = -inf and no gradient. The fp32 kernels of gpu_ops.h stay the
// correctness reference; these are the fast ones (src/kernels/cuda/flash_attention.cu explains the tiling).
//
// Supported: head dim 64 or 128; mask block size a multiple of 64 (64, 128, ...); any seq_len >= 1;
// scale > 0; every tensor pointer 16-byte aligned (cudaMalloc gives 256). Anything else throws smt::Error
// before a launch. Extra device memory: O(B*N) for the forward (key-validity bits when key_valid is given),
// O(B*H*N) for the backward (D = rowsum(dout * out)), plus an fp32 [B, N, H, hd] dq buffer only when the
// atomic dq mode must produce a bf16 dq (see FlashAttentionGrads). Never an N x N buffer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gpu_ops.h"

namespace smt::gpu {

using bf16 = __nv_bfloat16;

// Gradient outputs of flash_attention_backward, each [B, N, H, hd] and nullable (null = not wanted):
//   dq, dk, dv             : OVERWRITTEN with the bf16 rounding of the gradient;
//   dq_acc, dk_acc, dv_acc : the fp32 gradient ACCUMULATED into them (+=, as the fp32 ops do).
struct FlashAttentionGrads {
  bf16* dq = nullptr;
  bf16* dk = nullptr;
  bf16* dv = nullptr;
  float* dq_acc = nullptr;
  float* dk_acc = nullptr;
  float* dv_acc = nullptr;
};

// How dq is reduced over the key tiles:
//   kAtomic: inside the dk/dv kernel, fp32 atomicAdd into dq_acc (or into a zeroed fp32 scratch when a
//            bf16 dq is wanted); the summation order, hence the last bits, vary from run to run;
//   kDeterministic: a second kernel per query tile over the forward lists (recomputes P and dP), every
//            element written by one thread in a fixed order: bit-identical results on every run.
enum class FlashDqMode { kAtomic, kDeterministic };

// out = softmax(scale * q k^T masked) v in bf16; lse saved for the backward.
void flash_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                             const uint8_t* key_valid, const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd,
                             float scale, cudaStream_t stream);

// Gradients from out and lse of flash_attention_forward (same q, k, v, key_valid, mask, scale).
void flash_attention_backward(const FlashAttentionGrads& grads, const bf16* dout, const bf16* out, const float* lse,
                              const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_valid,
                              const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale,
                              FlashDqMode dq_mode, cudaStream_t stream);

// (fp32 <-> bf16 conversions: gpu::cast_fp32_to_bf16 / cast_bf16_to_fp32 of gpu_ops.h.)

}  // namespace smt::gpu
