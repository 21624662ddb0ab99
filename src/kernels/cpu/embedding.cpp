// Token embedding lookup and its scatter-add backward.
// Invariants: tokens are >= 0 (checked; the vocabulary size is the caller's to check);
// the backward splits over column chunks so that repeated tokens never race.
// Variants: float and double.
#include "kernels/embedding.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"

namespace smt::cpu {
namespace {
void check_tokens(const int32_t* tokens, int64_t T) {
  for (int64_t t = 0; t < T; ++t) SMT_CHECK(tokens[t] >= 0, "embedding: negative token id ", tokens[t], " at ", t);
}
constexpr int64_t kColumnChunk = 64;
}  // namespace

template <typename Real>
void embedding_forward(Real* out, const int32_t* tokens, const Real* table, int64_t T, int64_t d) {
  check_tokens(tokens, T);
  parallel_for(
      T, [&](int64_t t) { std::memcpy(out + t * d, table + int64_t(tokens[t]) * d, sizeof(Real) * d); }, d);
}

template <typename Real>
void embedding_backward(Real* dtable, const Real* dout, const int32_t* tokens, int64_t T, int64_t d) {
  check_tokens(tokens, T);
  const int64_t num_chunks = (d + kColumnChunk - 1) / kColumnChunk;
  parallel_for(
      num_chunks,
      [&](int64_t c) {
        const int64_t j0 = c * kColumnChunk, j1 = std::min(d, j0 + kColumnChunk);
        for (int64_t t = 0; t < T; ++t) {
          Real* dst = dtable + int64_t(tokens[t]) * d;
          const Real* src = dout + t * d;
          for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
        }
      },
      T * kColumnChunk);
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace smt::cpu
