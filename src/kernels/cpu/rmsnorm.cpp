// RMSNorm forward/backward, one row per token; row sums in double.
// Invariants: rstd[t] = 1/sqrt(mean(x[t]^2) + eps) is saved by the forward and reused by the backward;
// row sums in double, vectorised (omp simd reduction: a fixed order for a given build); dweight is
// reduced over fixed row blocks, then the blocks in order (no races, thread-count independent). Variants: float and double.
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"

namespace smt::cpu {
namespace {
constexpr int64_t kRowBlock = 256;
}

template <typename Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* x, const Real* weight, int64_t T, int64_t d,
                     std::type_identity_t<Real> eps) {
  parallel_for(
      T,
      [&](int64_t t) {
        const Real* xr = x + t * d;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < d; ++j) ss += double(xr[j]) * double(xr[j]);
        const Real r = static_cast<Real>(1.0 / std::sqrt(ss / double(d) + double(eps)));
        if (rstd != nullptr) rstd[t] = r;
        Real* o = out + t * d;
        for (int64_t j = 0; j < d; ++j) o[j] = xr[j] * r * weight[j];
      },
      d);
}

template <typename Real>
void rmsnorm_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dweight, const Real* dout,
                      const Real* x, const Real* weight, const Real* rstd, int64_t T, int64_t d) {
  // y_j = x_j r w_j, r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / d
  // dx_j = r w_j g_j - r^3 x_j / d * sum_i g_i w_i x_i
  if (dx != nullptr) {
    parallel_for(
        T,
        [&](int64_t t) {
          const Real* xr = x + t * d;
          const Real* g = dout + t * d;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < d; ++j) s += double(g[j]) * double(weight[j]) * double(xr[j]);
          const Real r = rstd[t];
          const Real c = static_cast<Real>(double(r) * double(r) * double(r) * s / double(d));
          Real* o = dx + t * d;
          for (int64_t j = 0; j < d; ++j) o[j] += r * weight[j] * g[j] - c * xr[j];
        },
        2 * d);
  }
  if (dweight != nullptr) {
    // dweight_j += sum_t g_tj x_tj r_t: fixed row blocks into partial rows (parallel), then added in
    // block order (one pass over the data; result independent of the thread count).
    const int64_t num_blocks = (T + kRowBlock - 1) / kRowBlock;
    std::vector<Real> partial(num_blocks * d, Real(0));
    parallel_for(
        num_blocks,
        [&](int64_t blk) {
          Real* acc = partial.data() + blk * d;
          const int64_t t1 = std::min(T, (blk + 1) * kRowBlock);
          for (int64_t t = blk * kRowBlock; t < t1; ++t) {
            const Real r = rstd[t];
            const Real* xr = x + t * d;
            const Real* g = dout + t * d;
            for (int64_t j = 0; j < d; ++j) acc[j] += g[j] * xr[j] * r;
          }
        },
        kRowBlock * d);
    for (int64_t blk = 0; blk < num_blocks; ++blk) {
      const Real* acc = partial.data() + blk * d;
      for (int64_t j = 0; j < d; ++j) dweight[j] += acc[j];
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int64_t,
                                      int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*, const double*,
                                       int64_t, int64_t);

}  // namespace smt::cpu
