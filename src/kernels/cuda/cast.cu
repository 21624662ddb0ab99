// CUDA precision casts: fp32 -> bf16 (round to nearest even, __float2bfloat16_rn) and bf16 -> fp32 (exact),
// elementwise grid-stride loops. The CPU reference is smt::bf16_bits_from_float (core/bf16.h).
#include <cuda_bf16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

__global__ void cast_to_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void cast_to_fp32_kernel(float* out, const __nv_bfloat16* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}

}  // namespace

const char* precision_name(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

void cast_fp32_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  cast_to_bf16_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(out, in, n);
  SMT_CUDA_CHECK_LAUNCH();
}

void cast_bf16_to_fp32(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  cast_to_fp32_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(out, in, n);
  SMT_CUDA_CHECK_LAUNCH();
}

StreamBuffer<__nv_bfloat16> to_bf16(const float* in, int64_t n, cudaStream_t stream) {
  StreamBuffer<__nv_bfloat16> out(static_cast<size_t>(n > 0 ? n : 0), stream);
  cast_fp32_to_bf16(out.data(), in, n, stream);
  return out;
}

}  // namespace smt::gpu
