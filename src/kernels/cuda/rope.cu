// CUDA rotary position embedding ("rotate half"): one thread per (token, head, pair i < hd/2), rotating by
// the cos/sin of a RopeTable, the CPU's own table (cpu::rope_cos_sin: angles in double, rounded to float)
// uploaded once per (N, hd, theta), so no transcendental runs per element and both backends use the same
// numbers.
// Invariants: out may alias x (each thread reads its pair before writing it); backward = R^T, accumulated
// into fp32 or written rounded to bf16; a bf16 x (the bf16 q/k GEMM output) is rotated in fp32.
#include <cuda_bf16.h>

#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"
#include "kernels/rope.h"

namespace smt::gpu {
namespace {

// kInverse: rotate by -angle (R^T, the backward). out (nullable) = y, or += y when kAccumulate;
// out_bf16 (nullable) = bf16(y). x fp32 or bf16; out / out_bf16 may alias x.
template <bool kInverse, bool kAccumulate, typename X>
__global__ void rope_kernel(float* out, __nv_bfloat16* out_bf16, const X* x, const float* __restrict__ cos_t,
                            const float* __restrict__ sin_t, int64_t BN, int64_t N, int64_t H, int64_t hd) {
  const int64_t half = hd / 2;
  const int64_t total = BN * H * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t bnh = idx / half;  // (bn * H + h)
    const int64_t n = (bnh / H) % N;
    const float c = cos_t[n * half + i];
    const float s = sin_t[n * half + i];
    const int64_t base = bnh * hd;
    const float xa = detail::to_float(x[base + i]), xb = detail::to_float(x[base + i + half]);
    const float ya = kInverse ? xa * c + xb * s : xa * c - xb * s;
    const float yb = kInverse ? xb * c - xa * s : xb * c + xa * s;
    if (out != nullptr) {
      if (kAccumulate) {
        out[base + i] += ya;
        out[base + i + half] += yb;
      } else {
        out[base + i] = ya;
        out[base + i + half] = yb;
      }
    }
    if (out_bf16 != nullptr) {
      out_bf16[base + i] = __float2bfloat16_rn(ya);
      out_bf16[base + i + half] = __float2bfloat16_rn(yb);
    }
  }
}

template <bool kInverse, bool kAccumulate, typename X>
void rope_launch(float* out, __nv_bfloat16* out_bf16, const X* x, const RopeTable& table, int64_t B, int64_t N,
                 int64_t H, cudaStream_t stream) {
  SMT_CHECK(N <= table.num_positions && table.head_dim > 0, "gpu::rope: the table holds ", table.num_positions,
            " positions, the sequence has ", N);
  const int64_t hd = table.head_dim;
  const int64_t total = B * N * H * (hd / 2);
  if (total <= 0) return;
  rope_kernel<kInverse, kAccumulate, X><<<detail::grid_for(total), detail::kThreads, 0, stream>>>(
      out, out_bf16, x, table.cos_t.data(), table.sin_t.data(), B * N, N, H, hd);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void ensure_rope_table(RopeTable& table, int64_t N, int64_t hd, float theta) {
  SMT_CHECK(hd > 0 && hd % 2 == 0, "gpu::rope: head dim must be even, got ", hd);
  if (table.num_positions >= N && table.head_dim == hd && table.theta == theta) return;
  const int64_t n = N * (hd / 2);
  std::vector<float> cos_t(static_cast<size_t>(n)), sin_t(static_cast<size_t>(n));
  cpu::rope_cos_sin<float>(cos_t.data(), sin_t.data(), N, hd, double(theta));
  table.cos_t = copy_to_device(cos_t);  // blocking: complete before any stream uses it
  table.sin_t = copy_to_device(sin_t);
  table.num_positions = N;
  table.head_dim = hd;
  table.theta = theta;
}

void rope_forward(float* out, __nv_bfloat16* out_bf16, const float* x, const RopeTable& table, int64_t B, int64_t N,
                  int64_t H, cudaStream_t stream) {
  SMT_CHECK(out != nullptr || out_bf16 != nullptr, "gpu::rope_forward: no output");
  rope_launch<false, false>(out, out_bf16, x, table, B, N, H, stream);
}

void rope_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, const RopeTable& table, int64_t B, int64_t N,
                       int64_t H, cudaStream_t stream) {
  SMT_CHECK(out != nullptr && x != nullptr, "gpu::rope_forward_bf16: null input or output");
  rope_launch<false, false>(nullptr, out, x, table, B, N, H, stream);
}

void rope_backward(float* dx, const float* dout, const RopeTable& table, int64_t B, int64_t N, int64_t H,
                   cudaStream_t stream, __nv_bfloat16* dx_bf16) {
  SMT_CHECK((dx != nullptr) != (dx_bf16 != nullptr), "gpu::rope_backward: exactly one of dx and dx_bf16");
  if (dx != nullptr)
    rope_launch<true, true>(dx, nullptr, dout, table, B, N, H, stream);
  else
    rope_launch<true, false>(nullptr, dx_bf16, dout, table, B, N, H, stream);
}

}  // namespace smt::gpu
