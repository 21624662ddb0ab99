// CUDA GELU (tanh approximation): forward, accumulating backward, in-place backward; elementwise.
// Invariants: the elementwise functions are those of gelu_device.cuh (shared with the experts' bf16 kernels).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu_device.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

using detail::gelu_grad;
using detail::gelu_value;

// 0: out = gelu(x); 1: out += gelu'(x) dout; 2: out = gelu'(x) out.
template <int kMode>
__global__ void gelu_kernel(float* out, const float* dout, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (kMode == 0) out[i] = gelu_value(x[i]);
    else if (kMode == 1) out[i] += gelu_grad(x[i]) * dout[i];
    else out[i] = gelu_grad(x[i]) * out[i];
  }
}

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  gelu_kernel<0><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(out, nullptr, x, n);
  SMT_CUDA_CHECK_LAUNCH();
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0 || dx == nullptr) return;
  gelu_kernel<1><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(dx, dout, x, n);
  SMT_CUDA_CHECK_LAUNCH();
}

void gelu_backward_inplace(float* d, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  gelu_kernel<2><<<detail::grid_for(n), detail::kThreads, 0, stream>>>(d, nullptr, x, n);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
