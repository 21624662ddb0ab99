// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, per row (mean of squares summed in double).
// Shapes: x, out [T, d]; weight [d]; rstd [T] (saved 1/rms for the backward). Templates over float/double.
#pragma once
#include <cstdint>
#include <type_traits>

namespace smt::cpu {

template <typename Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* x, const Real* weight, int64_t T, int64_t d,
                     std::type_identity_t<Real> eps);
// dx += ..., dweight += ... (either nullable)
template <typename Real>
void rmsnorm_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dweight, const Real* dout,
                      const Real* x, const Real* weight, const Real* rstd, int64_t T, int64_t d);

}  // namespace smt::cpu
