// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Elementwise over n values.
// Templates over float/double; the float version uses a vectorised rational tanh (Eigen's
// fast tanh, max error a few float ulps), the double one std::tanh.
#pragma once
#include <cstdint>

namespace smt::cpu {

template <typename Real>
void gelu_forward(Real* out, const Real* x, int64_t n);
// dx += gelu'(x) * dout
template <typename Real>
void gelu_backward(Real* dx, const Real* dout, const Real* x, int64_t n);
// In place: d[i] = gelu'(x[i]) * d[i] (overwrites; for fused backward chains such as the experts).
template <typename Real>
void gelu_backward_inplace(Real* d, const Real* x, int64_t n);
// tanh used by the float path (exposed for tests): rational approximation, |err| <= ~1e-7.
float fast_tanh(float x);

}  // namespace smt::cpu
