// CUDA RMSNorm: forward and dx with one warp per row (row sums in double, as the CPU); dweight through
// per-64-row-block partial sums (double; 64 rows keep enough blocks busy for d of a few hundred) reduced
// in block order, so it is deterministic.
// Invariants: rstd saved by the forward is reused by the backward.
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

constexpr int64_t kRowBlock = 64;

// Forward and dx: one warp per row (kRowsPerBlock rows per block), lanes strided over the row (coalesced),
// the row sum in double reduced by warp shuffles: no block barrier, and enough rows in flight per SM for
// rows of a few hundred to a few thousand elements.
constexpr int kRowsPerBlock = detail::kThreads / 32;

__global__ void rmsnorm_forward_kernel(float* out, __nv_bfloat16* out_bf16, float* rstd, const float* x,
                                       const float* weight, int64_t T, int64_t d, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t t = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (t >= T) return;  // warp-uniform
  const float* xr = x + t * d;
  double ss = 0.0;
  for (int64_t j = lane; j < d; j += 32) ss += double(xr[j]) * double(xr[j]);
  ss = detail::warp_sum(ss);
  const float r = static_cast<float>(1.0 / sqrt(ss / double(d) + double(eps)));
  if (rstd != nullptr && lane == 0) rstd[t] = r;
  for (int64_t j = lane; j < d; j += 32) {
    const float y = xr[j] * r * weight[j];
    if (out != nullptr) out[t * d + j] = y;
    if (out_bf16 != nullptr) out_bf16[t * d + j] = __float2bfloat16_rn(y);
  }
}

__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* weight,
                                           const float* rstd, int64_t T, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t t = blockIdx.x * int64_t(kRowsPerBlock) + (threadIdx.x >> 5);
  if (t >= T) return;  // warp-uniform
  const float* xr = x + t * d;
  const float* g = dout + t * d;
  double s = 0.0;
  for (int64_t j = lane; j < d; j += 32) s += double(g[j]) * double(weight[j]) * double(xr[j]);
  s = detail::warp_sum(s);
  const float r = rstd[t];
  const float c = static_cast<float>(double(r) * double(r) * double(r) * s / double(d));
  float* o = dx + t * d;
  for (int64_t j = lane; j < d; j += 32) o[j] += r * weight[j] * g[j] - c * xr[j];
}

unsigned row_blocks(int64_t T, const char* who) {
  const int64_t blocks = (T + kRowsPerBlock - 1) / kRowsPerBlock;
  SMT_CHECK(blocks <= 2147483647LL, who, ": too many rows ", T);
  return static_cast<unsigned>(blocks);
}

// partial[blk, j] = sum over rows of block blk of g * x * r (double). grid (ceil(d / 256), num_blocks).
__global__ void rmsnorm_dweight_partial_kernel(double* partial, const float* dout, const float* x, const float* rstd,
                                               int64_t T, int64_t d) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t blk = blockIdx.y;
  if (j >= d) return;
  const int64_t t0 = blk * kRowBlock, t1 = min(T, t0 + kRowBlock);
  double acc = 0.0;
  for (int64_t t = t0; t < t1; ++t) acc += double(dout[t * d + j]) * double(x[t * d + j]) * double(rstd[t]);
  partial[blk * d + j] = acc;
}

__global__ void reduce_partials_kernel(float* out, const double* partial, int64_t num_blocks, int64_t d) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  double acc = 0.0;
  for (int64_t b = 0; b < num_blocks; ++b) acc += partial[b * d + j];
  out[j] += static_cast<float>(acc);
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t d, float eps,
                     cudaStream_t stream, __nv_bfloat16* out_bf16) {
  if (T <= 0 || d <= 0) return;
  SMT_CHECK(out != nullptr || out_bf16 != nullptr, "gpu::rmsnorm_forward: no output");
  rmsnorm_forward_kernel<<<row_blocks(T, "gpu::rmsnorm_forward"), detail::kThreads, 0, stream>>>(
      out, out_bf16, rstd, x, weight, T, d, eps);
  SMT_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t T, int64_t d, cudaStream_t stream) {
  if (T <= 0 || d <= 0) return;
  if (dx != nullptr) {
    rmsnorm_backward_dx_kernel<<<row_blocks(T, "gpu::rmsnorm_backward"), detail::kThreads, 0, stream>>>(
        dx, dout, x, weight, rstd, T, d);
    SMT_CUDA_CHECK_LAUNCH();
  }
  if (dweight != nullptr) {
    const int64_t num_blocks = (T + kRowBlock - 1) / kRowBlock;
    SMT_CHECK(num_blocks <= 65535, "gpu::rmsnorm_backward: too many rows for the dweight grid: ", T);
    StreamBuffer<double> partial(static_cast<size_t>(num_blocks * d), stream);
    const dim3 grid(static_cast<unsigned>((d + detail::kThreads - 1) / detail::kThreads),
                    static_cast<unsigned>(num_blocks));
    rmsnorm_dweight_partial_kernel<<<grid, detail::kThreads, 0, stream>>>(partial.data(), dout, x, rstd, T, d);
    SMT_CUDA_CHECK_LAUNCH();
    reduce_partials_kernel<<<static_cast<unsigned>((d + detail::kThreads - 1) / detail::kThreads), detail::kThreads,
                             0, stream>>>(dweight, partial.data(), num_blocks, d);
    SMT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace smt::gpu
