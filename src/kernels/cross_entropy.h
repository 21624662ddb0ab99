// Softmax cross-entropy over C classes per row, with ignored rows (target < 0).
// Shapes: logits, probs [M, C]; targets [M].
#pragma once
#include <cstdint>

namespace smt::cpu {

// Writes probs = softmax(logits) (all rows) and returns the SUM of -log p[target] over rows
// with target >= 0 (computed in double). *num_valid (nullable) receives the count of such rows.
double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets, int64_t M, int64_t C,
                             int64_t* num_valid);
// dlogits += scale * (probs - onehot(target)) for rows with target >= 0 (scale = dLoss/dSum, e.g. 1/num_valid).
void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets, int64_t M, int64_t C,
                            float scale);

}  // namespace smt::cpu
