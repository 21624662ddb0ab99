// Softmax cross-entropy over C classes per row, with ignored rows (target < 0).
// Shapes: logits, probs [M, C]; targets [M]. Numerically stable (max subtracted), loss summed in double.
// Templates over float/double.
#pragma once
#include <cstdint>
#include <type_traits>

namespace smt::cpu {

// Writes probs = softmax(logits) (all rows) and returns the SUM of -log p[target] over rows
// with target >= 0 (computed in double). *num_valid (nullable) receives the count of such rows.
// Throws smt::Error if a target is >= C.
template <typename Real>
double cross_entropy_forward(Real* probs, const Real* logits, const int32_t* targets, int64_t M, int64_t C,
                             int64_t* num_valid);
// dlogits += scale * (probs - onehot(target)) for rows with target >= 0 (scale = dLoss/dSum, e.g. 1/num_valid).
template <typename Real>
void cross_entropy_backward(Real* dlogits, const Real* probs, const int32_t* targets, int64_t M, int64_t C,
                            std::type_identity_t<Real> scale);

}  // namespace smt::cpu
