// Rotary position embedding, "rotate half" (GPT-NeoX / LLaMA) convention:
// for head vector x of dim hd (even), half = hd/2, i in [0, half):
//   angle = pos * theta^(-2i/hd)
//   out[i]        = x[i] * cos(angle) - x[i+half] * sin(angle)
//   out[i+half]   = x[i+half] * cos(angle) + x[i] * sin(angle)
// Shapes: x, out [B, N, H, hd]; position of token (b, n) is n. Angles, cos and sin in double.
// Templates over float/double. out may alias x (in place).
#pragma once
#include <cstdint>
#include <type_traits>

namespace smt::cpu {

template <typename Real>
void rope_forward(Real* out, const Real* x, int64_t B, int64_t N, int64_t H, int64_t hd,
                  std::type_identity_t<Real> theta);
// dx += R^T dout
template <typename Real>
void rope_backward(Real* dx, const Real* dout, int64_t B, int64_t N, int64_t H, int64_t hd,
                   std::type_identity_t<Real> theta);
// The rotation table both use (and the GPU ops upload, so both backends rotate by the same numbers):
// cos_t[n * hd/2 + i] = Real(cos(n * theta^(-2i/hd))), sin_t likewise, angles in double; n < N.
template <typename Real>
void rope_cos_sin(Real* cos_t, Real* sin_t, int64_t N, int64_t hd, double theta);

}  // namespace smt::cpu
