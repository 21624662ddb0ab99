// Token embedding lookup: out[t, :] = table[tokens[t], :].
// Shapes: tokens [T] (values in [0, V)), table [V, d], out [T, d]. Templates over float/double.
#pragma once
#include <cstdint>

namespace smt::cpu {

template <typename Real>
void embedding_forward(Real* out, const int32_t* tokens, const Real* table, int64_t T, int64_t d);
// dtable[tokens[t], :] += dout[t, :]
template <typename Real>
void embedding_backward(Real* dtable, const Real* dout, const int32_t* tokens, int64_t T, int64_t d);

}  // namespace smt::cpu
