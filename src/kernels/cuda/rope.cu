// CUDA rotary position embedding ("rotate half"): one thread per (token, head, pair i < hd/2); the
// angle n * theta^(-2i/hd), its cos and sin in double (as the CPU table), rounded to float.
// Invariants: out may alias x (each thread reads its pair before writing it); backward = R^T, accumulated.
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

template <bool kBackward>
__global__ void rope_kernel(float* out, const float* x, int64_t BN, int64_t N, int64_t H, int64_t hd, double theta) {
  const int64_t half = hd / 2;
  const int64_t total = BN * H * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t bnh = idx / half;  // (bn * H + h)
    const int64_t n = (bnh / H) % N;
    const double inv_freq = pow(theta, -2.0 * double(i) / double(hd));
    const double a = double(n) * inv_freq;
    const float c = static_cast<float>(cos(a));
    const float s = static_cast<float>(sin(a));
    const int64_t base = bnh * hd;
    const float xa = x[base + i], xb = x[base + i + half];
    if (kBackward) {
      out[base + i] += xa * c + xb * s;
      out[base + i + half] += xb * c - xa * s;
    } else {
      out[base + i] = xa * c - xb * s;
      out[base + i + half] = xb * c + xa * s;
    }
  }
}

template <bool kBackward>
void rope_launch(float* out, const float* x, int64_t B, int64_t N, int64_t H, int64_t hd, float theta,
                 cudaStream_t stream) {
  SMT_CHECK(hd % 2 == 0, "gpu::rope: head dim must be even, got ", hd);
  const int64_t total = B * N * H * (hd / 2);
  if (total <= 0) return;
  rope_kernel<kBackward><<<detail::grid_for(total), detail::kThreads, 0, stream>>>(out, x, B * N, N, H, hd,
                                                                                 double(theta));
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(float* out, const float* x, int64_t B, int64_t N, int64_t H, int64_t hd, float theta,
                  cudaStream_t stream) {
  rope_launch<false>(out, x, B, N, H, hd, theta, stream);
}

void rope_backward(float* dx, const float* dout, int64_t B, int64_t N, int64_t H, int64_t hd, float theta,
                   cudaStream_t stream) {
  rope_launch<true>(dx, dout, B, N, H, hd, theta, stream);
}

}  // namespace smt::gpu
