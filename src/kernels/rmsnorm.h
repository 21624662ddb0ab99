// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, per row.
// Shapes: x, out [T, d]; weight [d]; rstd [T] (saved 1/rms for the backward).
#pragma once
#include <cstdint>

namespace smt::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t d, float eps);
// dx += ..., dweight += ... (either nullable)
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t T, int64_t d);

}  // namespace smt::cpu
