// Rotary position embedding, "rotate half" (GPT-NeoX / LLaMA) convention:
// for head vector x of dim hd (even), half = hd/2, i in [0, half):
//   angle = pos * theta^(-2i/hd)
//   out[i]        = x[i] * cos(angle) - x[i+half] * sin(angle)
//   out[i+half]   = x[i+half] * cos(angle) + x[i] * sin(angle)
// Shapes: x, out [B, N, H, hd]; position of token (b, n) is n.
#pragma once
#include <cstdint>

namespace smt::cpu {

void rope_forward(float* out, const float* x, int64_t B, int64_t N, int64_t H, int64_t hd, float theta);
// dx += R^T dout
void rope_backward(float* dx, const float* dout, int64_t B, int64_t N, int64_t H, int64_t hd, float theta);

}  // namespace smt::cpu
