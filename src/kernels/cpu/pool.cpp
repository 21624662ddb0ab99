// Mean pooling over valid positions (classifier head), forward and backward.
// Invariants: a row with no valid position gives 0 and receives no gradient; sums in double.
// Variants: float and double.
#include "kernels/pool.h"

#include <vector>

#include "core/threads.h"

namespace smt::cpu {

template <typename Real>
void mean_pool_forward(Real* out, const Real* x, const uint8_t* valid, int64_t B, int64_t N, int64_t d) {
  parallel_for(
      B,
      [&](int64_t b) {
        std::vector<double> acc(d, 0.0);
        int64_t count = 0;
        for (int64_t n = 0; n < N; ++n) {
          if (!valid[b * N + n]) continue;
          ++count;
          const Real* xr = x + (b * N + n) * d;
          for (int64_t j = 0; j < d; ++j) acc[j] += double(xr[j]);
        }
        const double inv = count > 0 ? 1.0 / double(count) : 0.0;
        Real* o = out + b * d;
        for (int64_t j = 0; j < d; ++j) o[j] = static_cast<Real>(acc[j] * inv);
      },
      N * d);
}

template <typename Real>
void mean_pool_backward(Real* dx, const Real* dout, const uint8_t* valid, int64_t B, int64_t N, int64_t d) {
  parallel_for(
      B,
      [&](int64_t b) {
        int64_t count = 0;
        for (int64_t n = 0; n < N; ++n) count += valid[b * N + n] ? 1 : 0;
        if (count == 0) return;
        const Real inv = static_cast<Real>(1.0 / double(count));
        const Real* g = dout + b * d;
        for (int64_t n = 0; n < N; ++n) {
          if (!valid[b * N + n]) continue;
          Real* o = dx + (b * N + n) * d;
          for (int64_t j = 0; j < d; ++j) o[j] += g[j] * inv;
        }
      },
      N * d);
}

template void mean_pool_forward<float>(float*, const float*, const uint8_t*, int64_t, int64_t, int64_t);
template void mean_pool_forward<double>(double*, const double*, const uint8_t*, int64_t, int64_t, int64_t);
template void mean_pool_backward<float>(float*, const float*, const uint8_t*, int64_t, int64_t, int64_t);
template void mean_pool_backward<double>(double*, const double*, const uint8_t*, int64_t, int64_t, int64_t);

}  // namespace smt::cpu
