// GELU (tanh approximation) as device functions, shared by the GELU kernels (gelu.cu) and the experts'
// fused epilogue (moe.cu). Invariants: tanh is the CPU float path's rational approximation (Eigen's fast
// tanh, FMA clamp) evaluated with fmaf, so GPU and CPU (Release, FMA) agree to a few ulp.
#pragma once
#include <cuda_runtime.h>

namespace smt::gpu::detail {

constexpr float kTanhClamp = 7.99881172180175781f;
constexpr float kA1 = 4.89352455891786e-03f, kA3 = 6.37261928875436e-04f, kA5 = 1.48572235717979e-05f,
                kA7 = 5.12229709037114e-08f, kA9 = -8.60467152213735e-11f, kA11 = 2.00018790482477e-13f,
                kA13 = -2.76076847742355e-16f;
constexpr float kB0 = 4.89352518554385e-03f, kB2 = 2.26843463243900e-03f, kB4 = 1.18534705686654e-04f,
                kB6 = 1.19825839466702e-06f;
constexpr float kC = 0.7978845608028654f, kK = 0.044715f, kK3 = static_cast<float>(3 * 0.044715);

__device__ __forceinline__ float tanh_approx(float x) {
  const float xc = x > kTanhClamp ? kTanhClamp : (x < -kTanhClamp ? -kTanhClamp : x);
  const float x2 = xc * xc;
  float p = fmaf(kA13, x2, kA11);
  p = fmaf(p, x2, kA9);
  p = fmaf(p, x2, kA7);
  p = fmaf(p, x2, kA5);
  p = fmaf(p, x2, kA3);
  p = fmaf(p, x2, kA1);
  p = p * xc;
  float q = fmaf(kB6, x2, kB4);
  q = fmaf(q, x2, kB2);
  q = fmaf(q, x2, kB0);
  return p / q;
}
__device__ __forceinline__ float gelu_value(float x) {
  const float x2 = x * x;
  const float t = tanh_approx(kC * fmaf(kK * x2, x, x));
  const float h = 0.5f * x;
  return fmaf(h, t, h);
}
__device__ __forceinline__ float gelu_grad(float x) {
  const float x2 = x * x;
  const float t = tanh_approx(kC * fmaf(kK * x2, x, x));
  const float h = 0.5f * x;
  const float sech2 = fmaf(-t, t, 1.0f);
  return fmaf(0.5f, t, 0.5f) + h * sech2 * kC * fmaf(kK3, x2, 1.0f);
}

}  // namespace smt::gpu::detail
