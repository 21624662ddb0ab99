// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Elementwise over n values.
#pragma once
#include <cstdint>

namespace smt::cpu {

void gelu_forward(float* out, const float* x, int64_t n);
// dx += gelu'(x) * dout
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);

}  // namespace smt::cpu
