// Token embedding lookup: out[t, :] = table[tokens[t], :].
// Shapes: tokens [T] (values in [0, V)), table [V, d], out [T, d].
#pragma once
#include <cstdint>

namespace smt::cpu {

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t T, int64_t d);
// dtable[tokens[t], :] += dout[t, :]
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t T, int64_t d);

}  // namespace smt::cpu
