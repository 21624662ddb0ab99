// AdamW update over one contiguous parameter range, and the deterministic sum of squares for clipping.
// Invariants: bias corrections in double; decay uses the pre-update parameter:
//   p = p - lr * (wd * p + mhat / (sqrt(vhat) + eps)). Variant: float only (AVX2 body + scalar tail).
#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/threads.h"

namespace smt::cpu {
namespace {
constexpr int64_t kChunk = 16384;
}

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& hp,
                  int64_t step, float grad_scale) {
  SMT_CHECK(step >= 1, "adamw_update: step is 1-based, got ", step);
  const double bc1 = 1.0 - std::pow(double(hp.beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(hp.beta2), double(step));
  const float inv_bc1 = static_cast<float>(1.0 / bc1);
  const float inv_bc2 = static_cast<float>(1.0 / bc2);
  const float b1 = hp.beta1, b2 = hp.beta2, one_b1 = 1.0f - hp.beta1, one_b2 = 1.0f - hp.beta2;
  const float lr = hp.lr, wd = hp.weight_decay, eps = hp.eps;
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  parallel_for(
      num_chunks,
      [&](int64_t c) {
        const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
        int64_t i = i0;
#if defined(__AVX2__)
        // Same operations as the scalar loop below, 8 lanes at a time (std::sqrt does not vectorise
        // without -fno-math-errno).
        const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vob1 = _mm256_set1_ps(one_b1),
                     vob2 = _mm256_set1_ps(one_b2), vibc1 = _mm256_set1_ps(inv_bc1),
                     vibc2 = _mm256_set1_ps(inv_bc2), vlr = _mm256_set1_ps(lr), vwd = _mm256_set1_ps(wd),
                     veps = _mm256_set1_ps(eps), vgs = _mm256_set1_ps(grad_scale);
        for (; i + 8 <= i1; i += 8) {
          const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grad + i), vgs);
          const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(vob1, g));
          const __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                          _mm256_mul_ps(_mm256_mul_ps(vob2, g), g));
          _mm256_storeu_ps(m + i, mi);
          _mm256_storeu_ps(v + i, vi);
          const __m256 mhat = _mm256_mul_ps(mi, vibc1);
          const __m256 vhat = _mm256_mul_ps(vi, vibc2);
          const __m256 p = _mm256_loadu_ps(param + i);
          const __m256 upd = _mm256_add_ps(_mm256_mul_ps(vwd, p),
                                           _mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), veps)));
          _mm256_storeu_ps(param + i, _mm256_sub_ps(p, _mm256_mul_ps(vlr, upd)));
        }
#endif
        for (; i < i1; ++i) {
          const float g = grad[i] * grad_scale;
          const float mi = b1 * m[i] + one_b1 * g;
          const float vi = b2 * v[i] + (one_b2 * g) * g;
          m[i] = mi;
          v[i] = vi;
          const float mhat = mi * inv_bc1;
          const float vhat = vi * inv_bc2;
          const float p = param[i];
          param[i] = p - lr * (wd * p + mhat / (std::sqrt(vhat) + eps));
        }
      },
      kChunk * 4);
}

double sum_squares(const float* x, int64_t n) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(num_chunks, 0.0);
  parallel_for(
      num_chunks,
      [&](int64_t c) {
        const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = i0; i < i1; ++i) s += double(x[i]) * double(x[i]);
        partial[c] = s;
      },
      kChunk);
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace smt::cpu
