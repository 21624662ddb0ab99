// CUDA mean pooling over valid positions: forward and backward with one thread per (batch row, column),
// sums in double; a batch row with no valid position gives 0 and receives no gradient. No atomics.
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

// grid (ceil(d / 256), B)
__global__ void mean_pool_forward_kernel(float* out, const float* x, const uint8_t* valid, int64_t N, int64_t d) {
  const int64_t b = blockIdx.y;
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  double acc = 0.0;
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (!valid[b * N + n]) continue;
    ++count;
    acc += double(x[(b * N + n) * d + j]);
  }
  out[b * d + j] = count > 0 ? static_cast<float>(acc * (1.0 / double(count))) : 0.0f;
}

__global__ void mean_pool_backward_kernel(float* dx, const float* dout, const uint8_t* valid, int64_t N, int64_t d) {
  const int64_t b = blockIdx.y;
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += valid[b * N + n] ? 1 : 0;
  if (count == 0) return;
  const float g = dout[b * d + j] * static_cast<float>(1.0 / double(count));
  for (int64_t n = 0; n < N; ++n)
    if (valid[b * N + n]) dx[(b * N + n) * d + j] += g;
}

dim3 pool_grid(int64_t B, int64_t d) {
  SMT_CHECK(B <= 65535, "gpu::mean_pool: batch too large for the grid: ", B);
  return dim3(static_cast<unsigned>((d + detail::kThreads - 1) / detail::kThreads), static_cast<unsigned>(B));
}

}  // namespace

void mean_pool_forward(float* out, const float* x, const uint8_t* valid, int64_t B, int64_t N, int64_t d,
                       cudaStream_t stream) {
  if (B <= 0 || d <= 0) return;
  mean_pool_forward_kernel<<<pool_grid(B, d), detail::kThreads, 0, stream>>>(out, x, valid, N, d);
  SMT_CUDA_CHECK_LAUNCH();
}

void mean_pool_backward(float* dx, const float* dout, const uint8_t* valid, int64_t B, int64_t N, int64_t d,
                        cudaStream_t stream) {
  if (B <= 0 || d <= 0 || dx == nullptr) return;
  mean_pool_backward_kernel<<<pool_grid(B, d), detail::kThreads, 0, stream>>>(dx, dout, valid, N, d);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
