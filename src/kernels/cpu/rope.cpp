// Rotary position embedding ("rotate half"), forward and its transpose (backward).
// Invariants: angles, cos and sin computed in double into a [N, hd/2] table (cached per thread), then
// rounded to Real; out may alias x. Variants: float and double.
#include "kernels/rope.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"

namespace smt::cpu {
namespace {

// cos/sin of n * theta^(-2i/hd) for n < N, i < hd/2 ([N, hd/2] each), cached per thread: the forward
// and backward of q and k in every layer use the same table. A table for a larger N serves a smaller one.
template <typename Real>
struct RopeTable {
  int64_t num_positions = 0, head_dim = 0;
  double theta = 0.0;
  std::vector<Real> cos_t, sin_t;
};

template <typename Real>
const RopeTable<Real>& rope_table(int64_t N, int64_t hd, double theta) {
  thread_local RopeTable<Real> table;
  if (table.num_positions >= N && table.head_dim == hd && table.theta == theta) return table;
  const int64_t half = hd / 2;
  table.cos_t.resize(N * half);
  table.sin_t.resize(N * half);
  rope_cos_sin<Real>(table.cos_t.data(), table.sin_t.data(), N, hd, theta);
  table.num_positions = N;
  table.head_dim = hd;
  table.theta = theta;
  return table;
}

// kBackward = false: out = R x ; true: out += R^T x (rotation by -angle), accumulated.
template <typename Real, bool kBackward>
void rope_apply(Real* out, const Real* x, int64_t B, int64_t N, int64_t H, int64_t hd, double theta) {
  SMT_CHECK(hd % 2 == 0, "rope: head dim must be even, got ", hd);
  const int64_t half = hd / 2;
  const RopeTable<Real>& table = rope_table<Real>(N, hd, theta);
  const Real* cos_t = table.cos_t.data();
  const Real* sin_t = table.sin_t.data();
  parallel_for(
      B * N,
      [&](int64_t bn) {
        const int64_t n = bn % N;
        const Real* c = cos_t + n * half;
        const Real* s = sin_t + n * half;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t base = (bn * H + h) * hd;
          const Real* xi = x + base;
          Real* o = out + base;
          for (int64_t i = 0; i < half; ++i) {
            const Real a = xi[i], b = xi[i + half];
            if constexpr (kBackward) {
              o[i] += a * c[i] + b * s[i];
              o[i + half] += b * c[i] - a * s[i];
            } else {
              o[i] = a * c[i] - b * s[i];
              o[i + half] = b * c[i] + a * s[i];
            }
          }
        }
      },
      H * hd);
}

}  // namespace

template <typename Real>
void rope_cos_sin(Real* cos_t, Real* sin_t, int64_t N, int64_t hd, double theta) {
  SMT_CHECK(hd % 2 == 0 && N >= 0, "rope: head dim must be even, got ", hd);
  const int64_t half = hd / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * double(i) / double(hd));
  parallel_for(
      N,
      [&](int64_t n) {
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(n) * inv_freq[i];
          cos_t[n * half + i] = static_cast<Real>(std::cos(a));
          sin_t[n * half + i] = static_cast<Real>(std::sin(a));
        }
      },
      half * 40);
}

template <typename Real>
void rope_forward(Real* out, const Real* x, int64_t B, int64_t N, int64_t H, int64_t hd,
                  std::type_identity_t<Real> theta) {
  rope_apply<Real, false>(out, x, B, N, H, hd, double(theta));
}

template <typename Real>
void rope_backward(Real* dx, const Real* dout, int64_t B, int64_t N, int64_t H, int64_t hd,
                   std::type_identity_t<Real> theta) {
  rope_apply<Real, true>(dx, dout, B, N, H, hd, double(theta));
}

template void rope_forward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, float);
template void rope_forward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t, float);
template void rope_backward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t, double);
template void rope_cos_sin<float>(float*, float*, int64_t, int64_t, double);
template void rope_cos_sin<double>(double*, double*, int64_t, int64_t, double);

}  // namespace smt::cpu
