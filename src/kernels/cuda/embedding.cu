// CUDA embedding lookup (forward: one thread per output element) and its backward (atomicAdd into the table).
// Invariants: token ids are trusted to lie in [0, V) (the CPU op does not check either).
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* table, int64_t T, int64_t d) {
  const int64_t n = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, j = i - t * d;
    out[i] = table[int64_t(tokens[t]) * d + j];
  }
}

__global__ void embedding_backward_kernel(float* dtable, const float* dout, const int32_t* tokens, int64_t T,
                                          int64_t d) {
  const int64_t n = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, j = i - t * d;
    atomicAdd(dtable + int64_t(tokens[t]) * d + j, dout[i]);
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t T, int64_t d,
                       cudaStream_t stream) {
  if (T <= 0 || d <= 0) return;
  embedding_forward_kernel<<<detail::grid_for(T * d), detail::kThreads, 0, stream>>>(out, tokens, table, T, d);
  SMT_CUDA_CHECK_LAUNCH();
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t T, int64_t d,
                        cudaStream_t stream) {
  if (T <= 0 || d <= 0 || dtable == nullptr) return;
  embedding_backward_kernel<<<detail::grid_for(T * d), detail::kThreads, 0, stream>>>(dtable, dout, tokens, T, d);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
