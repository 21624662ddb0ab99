// CUDA GELU (tanh approximation): forward, accumulating backward, in-place backward; elementwise; forward and
// in-place backward can also write their result rounded to bf16 (the operand of a following bf16 GEMM).
// Invariants: the elementwise functions are those of gelu_device.cuh (shared with the experts' fused epilogue).
#include <cuda_bf16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu_device.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

using detail::gelu_grad;
using detail::gelu_value;

// 0: out = gelu(x); 1: out += gelu'(x) dout; 2: out = gelu'(x) out. out_bf16 (nullable, modes 0 and 2):
// also the result rounded to bf16.
template <int kMode>
__global__ void gelu_kernel(float* out, const float* dout, const float* x, int64_t n, __nv_bfloat16* out_bf16) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (kMode == 0) {
      const float v = gelu_value(x[i]);
      out[i] = v;
      if (out_bf16 != nullptr) out_bf16[i] = __float2bfloat16_rn(v);
    } else if (kMode == 1) {
      out[i] += gelu_grad(x[i]) * dout[i];
    } else {
      const float v = gelu_grad(x[i]) * out[i];
      out[i] = v;
      if (out_bf16 != nullptr) out_bf16[i] = __float2bfloat16_rn(v);
    }
  }
}

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream, __nv_bfloat16* out_bf16) {
  if (n <= 0) return;
  gelu_kernel<0><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(out, nullptr, x, n, out_bf16);
  SMT_CUDA_CHECK_LAUNCH();
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0 || dx == nullptr) return;
  gelu_kernel<1><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(dx, dout, x, n, nullptr);
  SMT_CUDA_CHECK_LAUNCH();
}

void gelu_backward_inplace(float* d, const float* x, int64_t n, cudaStream_t stream, __nv_bfloat16* d_bf16) {
  if (n <= 0) return;
  gelu_kernel<2><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(d, nullptr, x, n, d_bf16);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
