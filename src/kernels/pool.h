// Mean pooling over valid (non-PAD) positions, for the classifier head.
// Shapes: x [B, N, d]; valid [B, N] (1 = real token); out [B, d]. A row with no valid token gives 0.
#pragma once
#include <cstdint>

namespace smt::cpu {

void mean_pool_forward(float* out, const float* x, const uint8_t* valid, int64_t B, int64_t N, int64_t d);
// dx += dout / count at valid positions
void mean_pool_backward(float* dx, const float* dout, const uint8_t* valid, int64_t B, int64_t N, int64_t d);

}  // namespace smt::cpu
