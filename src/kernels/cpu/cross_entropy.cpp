// Softmax cross-entropy with ignored rows (target < 0).
// Invariants: max-subtracted exponentials (float: an AVX2 Cephes exp when built for it, ~2 ulp), row
// sums and the loss in double, rows summed in order (deterministic for any thread count).
// Variants: float and double.
#include "kernels/cross_entropy.h"

#include <cmath>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/threads.h"

namespace smt::cpu {
namespace {

#if defined(__AVX2__) && defined(__FMA__)
// Cephes-style expf for 8 lanes (range reduction by ln 2, degree-5 polynomial, 2^n via the exponent
// bits); relative error ~2 ulp. Inputs here are <= 0 (max subtracted); clamped below at -87.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

// p[c] = exp(z[c] - mx) for c < C; returns the sum in double.
inline double exp_row(float* p, const float* z, float mx, int64_t C) {
  double sum = 0.0;
  int64_t c = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 m = _mm256_set1_ps(mx);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  for (; c + 8 <= C; c += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(z + c), m));
    _mm256_storeu_ps(p + c, e);
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
  for (; c < C; ++c) {
    p[c] = std::exp(z[c] - mx);
    sum += double(p[c]);
  }
  return sum;
}
inline double exp_row(double* p, const double* z, double mx, int64_t C) {
  double sum = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = std::exp(z[c] - mx);
    sum += p[c];
  }
  return sum;
}

}  // namespace

template <typename Real>
double cross_entropy_forward(Real* probs, const Real* logits, const int32_t* targets, int64_t M, int64_t C,
                             int64_t* num_valid) {
  int64_t count = 0;
  for (int64_t i = 0; i < M; ++i) {
    SMT_CHECK(targets[i] < C, "cross_entropy: target ", targets[i], " at row ", i, " is >= number of classes ", C);
    if (targets[i] >= 0) ++count;
  }
  if (num_valid != nullptr) *num_valid = count;
  std::vector<double> row_loss(M, 0.0);
  parallel_for(
      M,
      [&](int64_t i) {
        const Real* z = logits + i * C;
        Real* p = probs + i * C;
        Real mx = z[0];
        for (int64_t c = 1; c < C; ++c) mx = z[c] > mx ? z[c] : mx;
        const double sum = exp_row(p, z, mx, C);
        const Real inv = static_cast<Real>(1.0 / sum);
        for (int64_t c = 0; c < C; ++c) p[c] *= inv;
        const int32_t tgt = targets[i];
        if (tgt >= 0) row_loss[i] = std::log(sum) - (double(z[tgt]) - double(mx));
      },
      C * 4);
  double total = 0.0;
  for (int64_t i = 0; i < M; ++i) total += row_loss[i];
  return total;
}

template <typename Real>
void cross_entropy_backward(Real* dlogits, const Real* probs, const int32_t* targets, int64_t M, int64_t C,
                            std::type_identity_t<Real> scale) {
  parallel_for(
      M,
      [&](int64_t i) {
        const int32_t tgt = targets[i];
        if (tgt < 0) return;
        const Real* p = probs + i * C;
        Real* g = dlogits + i * C;
        for (int64_t c = 0; c < C; ++c) g[c] += scale * p[c];
        g[tgt] -= scale;
      },
      C);
}

template double cross_entropy_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t*);
template double cross_entropy_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t*);
template void cross_entropy_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, float);
template void cross_entropy_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, double);

}  // namespace smt::cpu
