// AdamW (decoupled weight decay, bias-corrected moments), one contiguous parameter range.
// All arrays [n]; step is 1-based. grad_scale multiplies the gradient first (global-norm clipping).
// Update (g = grad * grad_scale):
//   m = b1 m + (1-b1) g ; v = b2 v + (1-b2) g^2 ; mhat = m/(1-b1^t) ; vhat = v/(1-b2^t)
//   p = p - lr * (wd * p + mhat / (sqrt(vhat) + eps))      (decay uses the pre-update p)
#pragma once
#include <cstdint>

namespace smt::cpu {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // applied as param -= lr * weight_decay * param
};

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& hp,
                  int64_t step, float grad_scale);

// Sum of squares of grad[0..n) in double (for global-norm clipping). Deterministic: fixed-size
// chunks summed in order, independent of the thread count.
double sum_squares(const float* x, int64_t n);

}  // namespace smt::cpu
