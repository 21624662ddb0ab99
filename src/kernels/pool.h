// Mean pooling over valid (non-PAD) positions, for the classifier head.
// Shapes: x [B, N, d]; valid [B, N] (1 = real token); out [B, d]. A row with no valid token gives 0.
// Templates over float/double.
#pragma once
#include <cstdint>

namespace smt::cpu {

template <typename Real>
void mean_pool_forward(Real* out, const Real* x, const uint8_t* valid, int64_t B, int64_t N, int64_t d);
// dx += dout / count at valid positions
template <typename Real>
void mean_pool_backward(Real* dx, const Real* dout, const uint8_t* valid, int64_t B, int64_t N, int64_t d);

}  // namespace smt::cpu
