// CUDA AdamW (one fused elementwise kernel, the CPU's float operations in the same order) and the sum of
// squares for global-norm clipping (double accumulation, fixed grid, block tree sums, one final block:
// deterministic for a given n). Invariants: bias corrections computed on the host in double.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

struct AdamWScalars {
  float lr, b1, b2, one_b1, one_b2, inv_bc1, inv_bc2, eps, wd, grad_scale;
};

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, AdamWScalars s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i] * s.grad_scale;
    const float mi = s.b1 * m[i] + s.one_b1 * g;
    const float vi = s.b2 * v[i] + (s.one_b2 * g) * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * s.inv_bc1;
    const float vhat = vi * s.inv_bc2;
    const float p = param[i];
    param[i] = p - s.lr * (s.wd * p + mhat / (sqrtf(vhat) + s.eps));
  }
}

constexpr unsigned kSumBlocks = 512;

__global__ void sum_squares_partial_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += double(x[i]) * double(x[i]);
  s = detail::block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* result, const double* partial, int64_t n) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = detail::block_sum(s, scratch);
  if (threadIdx.x == 0) result[0] = s;
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const cpu::AdamWParams& hp,
                  int64_t step, float grad_scale, cudaStream_t stream) {
  SMT_CHECK(step >= 1, "gpu::adamw_update: step is 1-based, got ", step);
  if (n <= 0) return;
  const double bc1 = 1.0 - std::pow(double(hp.beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(hp.beta2), double(step));
  AdamWScalars s;
  s.lr = hp.lr;
  s.b1 = hp.beta1;
  s.b2 = hp.beta2;
  s.one_b1 = 1.0f - hp.beta1;
  s.one_b2 = 1.0f - hp.beta2;
  s.inv_bc1 = static_cast<float>(1.0 / bc1);
  s.inv_bc2 = static_cast<float>(1.0 / bc2);
  s.eps = hp.eps;
  s.wd = hp.weight_decay;
  s.grad_scale = grad_scale;
  adamw_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(param, grad, m, v, n, s);
  SMT_CUDA_CHECK_LAUNCH();
}

void sum_squares_on_device(double* result, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) {
    SMT_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  const unsigned blocks = std::min<unsigned>(kSumBlocks, detail::grid_for(n));
  StreamBuffer<double> partial(blocks, stream);
  sum_squares_partial_kernel<<<blocks, detail::kThreads, 0, stream>>>(partial.data(), x, n);
  SMT_CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<1, detail::kThreads, 0, stream>>>(result, partial.data(), blocks);
  SMT_CUDA_CHECK_LAUNCH();
}

double sum_squares(const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return 0.0;
  StreamBuffer<double> result(1, stream);
  sum_squares_on_device(result.data(), x, n, stream);
  double host = 0.0;
  SMT_CUDA_CHECK(cudaMemcpyAsync(&host, result.data(), sizeof(double), cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace smt::gpu
