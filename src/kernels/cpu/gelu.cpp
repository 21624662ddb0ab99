// GELU (tanh approximation) forward, backward (accumulating) and in-place backward.
// Invariants: float uses fast_tanh (Eigen's clamped 13/6 rational approximation, max error ~1e-7);
// double uses std::tanh. Variants: float (AVX2+FMA body when compiled for it, scalar tail with the same
// operations) and double (scalar, for gradient checks).
#include "kernels/gelu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "core/threads.h"

namespace smt::cpu {
namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;
constexpr int64_t kChunk = 4096;

// Eigen's generic_fast_tanh_float: tanh(x) ~ x * P(x^2) / Q(x^2) on [-c, c], c the smallest value at which
// the approximation gives exactly 1 (it depends on FMA). The scalar and AVX2 versions do the same operations,
// so a value's result does not depend on whether it falls in a vector body or a tail.
#if defined(__FMA__)
constexpr float kTanhClamp = 7.99881172180175781f;
#else
constexpr float kTanhClamp = 7.90531110763549805f;
#endif
constexpr float kA1 = 4.89352455891786e-03f, kA3 = 6.37261928875436e-04f, kA5 = 1.48572235717979e-05f,
                kA7 = 5.12229709037114e-08f, kA9 = -8.60467152213735e-11f, kA11 = 2.00018790482477e-13f,
                kA13 = -2.76076847742355e-16f;
constexpr float kB0 = 4.89352518554385e-03f, kB2 = 2.26843463243900e-03f, kB4 = 1.18534705686654e-04f,
                kB6 = 1.19825839466702e-06f;
constexpr float kC = static_cast<float>(kSqrt2OverPi), kK = static_cast<float>(kCubic),
                kK3 = static_cast<float>(3 * kCubic);

#if defined(__AVX2__) && defined(__FMA__)
#define SMT_GELU_AVX2 1
inline float madd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float madd(float a, float b, float c) { return a * b + c; }
#endif

inline float tanh_approx(float x) {
  const float xc = x > kTanhClamp ? kTanhClamp : (x < -kTanhClamp ? -kTanhClamp : x);  // NaN passes through
  const float x2 = xc * xc;
  float p = madd(kA13, x2, kA11);
  p = madd(p, x2, kA9);
  p = madd(p, x2, kA7);
  p = madd(p, x2, kA5);
  p = madd(p, x2, kA3);
  p = madd(p, x2, kA1);
  p = p * xc;
  float q = madd(kB6, x2, kB4);
  q = madd(q, x2, kB2);
  q = madd(q, x2, kB0);
  return p / q;
}

// gelu(x) = h (1 + t), h = x/2, t = tanh(c (x + k x^3))
// gelu'(x) = (1 + t)/2 + h (1 - t^2) c (1 + 3k x^2)
inline float gelu_value(float x) {
  const float x2 = x * x;
  const float t = tanh_approx(kC * madd(kK * x2, x, x));
  const float h = 0.5f * x;
  return madd(h, t, h);
}
inline float gelu_grad(float x) {
  const float x2 = x * x;
  const float t = tanh_approx(kC * madd(kK * x2, x, x));
  const float h = 0.5f * x;
  const float sech2 = madd(-t, t, 1.0f);
  return madd(0.5f, t, 0.5f) + h * sech2 * kC * madd(kK3, x2, 1.0f);
}
inline double gelu_value(double x) {
  const double u = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 0.5 * x * (1.0 + std::tanh(u));
}
inline double gelu_grad(double x) {
  const double x2 = x * x;
  const double t = std::tanh(kSqrt2OverPi * (x + kCubic * x2 * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * kCubic * x2);
}

#ifdef SMT_GELU_AVX2
inline __m256 tanh8(__m256 x) {
  const __m256 xc = _mm256_min_ps(_mm256_set1_ps(kTanhClamp), _mm256_max_ps(_mm256_set1_ps(-kTanhClamp), x));
  const __m256 x2 = _mm256_mul_ps(xc, xc);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kA13), x2, _mm256_set1_ps(kA11));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kA9));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kA7));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kA5));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kA3));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(kA1));
  p = _mm256_mul_ps(p, xc);
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kB6), x2, _mm256_set1_ps(kB4));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kB2));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(kB0));
  return _mm256_div_ps(p, q);
}
inline __m256 tanh_arg8(__m256 x) {
  const __m256 x2 = _mm256_mul_ps(x, x);
  return _mm256_mul_ps(_mm256_set1_ps(kC), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(kK), x2), x, x));
}
inline __m256 gelu_value8(__m256 x) {
  const __m256 t = tanh8(tanh_arg8(x));
  const __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), x);
  return _mm256_fmadd_ps(h, t, h);
}
inline __m256 gelu_grad8(__m256 x) {
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 t = tanh8(tanh_arg8(x));
  const __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), x);
  const __m256 sech2 = _mm256_fnmadd_ps(t, t, _mm256_set1_ps(1.0f));
  const __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(kK3), x2, _mm256_set1_ps(1.0f));
  const __m256 right = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(h, sech2), _mm256_set1_ps(kC)), poly);
  return _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(0.5f), t, _mm256_set1_ps(0.5f)), right);
}
#endif

// Kind of loop body: out = gelu(x); dx += gelu'(x) dout; d = gelu'(x) d.
enum class Mode { kForward, kBackward, kBackwardInplace };

template <Mode kMode>
void run_float(float* out, const float* dout, const float* x, int64_t i0, int64_t i1) {
  int64_t i = i0;
#ifdef SMT_GELU_AVX2
  for (; i + 8 <= i1; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    if constexpr (kMode == Mode::kForward) {
      _mm256_storeu_ps(out + i, gelu_value8(xv));
    } else if constexpr (kMode == Mode::kBackward) {
      const __m256 g = _mm256_mul_ps(gelu_grad8(xv), _mm256_loadu_ps(dout + i));
      _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), g));
    } else {
      _mm256_storeu_ps(out + i, _mm256_mul_ps(gelu_grad8(xv), _mm256_loadu_ps(out + i)));
    }
  }
#endif
  for (; i < i1; ++i) {
    if constexpr (kMode == Mode::kForward) {
      out[i] = gelu_value(x[i]);
    } else if constexpr (kMode == Mode::kBackward) {
      out[i] += gelu_grad(x[i]) * dout[i];
    } else {
      out[i] = gelu_grad(x[i]) * out[i];
    }
  }
}

template <Mode kMode>
void run_double(double* out, const double* dout, const double* x, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    if constexpr (kMode == Mode::kForward) {
      out[i] = gelu_value(x[i]);
    } else if constexpr (kMode == Mode::kBackward) {
      out[i] += gelu_grad(x[i]) * dout[i];
    } else {
      out[i] = gelu_grad(x[i]) * out[i];
    }
  }
}

template <Mode kMode, typename Real>
void run(Real* out, const Real* dout, const Real* x, int64_t n) {
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  parallel_for(
      num_chunks,
      [&](int64_t c) {
        const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
        if constexpr (std::is_same_v<Real, float>)
          run_float<kMode>(out, dout, x, i0, i1);
        else
          run_double<kMode>(out, dout, x, i0, i1);
      },
      kChunk * 8);
}

}  // namespace

float fast_tanh(float x) { return tanh_approx(x); }

template <typename Real>
void gelu_forward(Real* out, const Real* x, int64_t n) {
  run<Mode::kForward, Real>(out, nullptr, x, n);
}

template <typename Real>
void gelu_backward(Real* dx, const Real* dout, const Real* x, int64_t n) {
  run<Mode::kBackward, Real>(dx, dout, x, n);
}

template <typename Real>
void gelu_backward_inplace(Real* d, const Real* x, int64_t n) {
  run<Mode::kBackwardInplace, Real>(d, nullptr, x, n);
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t);
template void gelu_backward<double>(double*, const double*, const double*, int64_t);
template void gelu_backward_inplace<float>(float*, const float*, int64_t);
template void gelu_backward_inplace<double>(double*, const double*, int64_t);

}  // namespace smt::cpu
