// Dense linear layer and transposed matmul through OpenBLAS cblas (sgemm/dgemm by overload).
// Invariants: row-major, weights [in, out]; backward accumulates into every non-null output.
// Variants: float and double (explicit instantiations at the end).
#include "kernels/linear.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "core/threads.h"

namespace smt::cpu {
namespace {

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K),
              alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, double alpha,
                 const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K),
              alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

constexpr int64_t kRowBlock = 256;

}  // namespace

template <typename Real>
void add_column_sums(Real* out, const Real* a, int64_t M, int64_t n) {
  // One pass over the rows: fixed blocks of kRowBlock rows each sum into their own partial row (in
  // parallel), then the partials are added in block order, so the result does not depend on the
  // thread count.
  if (M <= 0 || n <= 0) return;
  const int64_t num_blocks = (M + kRowBlock - 1) / kRowBlock;
  std::vector<Real> partial(num_blocks * n, Real(0));
  parallel_for(
      num_blocks,
      [&](int64_t blk) {
        Real* acc = partial.data() + blk * n;
        const int64_t i1 = std::min(M, (blk + 1) * kRowBlock);
        for (int64_t i = blk * kRowBlock; i < i1; ++i) {
          const Real* row = a + i * n;
          for (int64_t j = 0; j < n; ++j) acc[j] += row[j];
        }
      },
      kRowBlock * n);
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const Real* acc = partial.data() + blk * n;
    for (int64_t j = 0; j < n; ++j) out[j] += acc[j];
  }
}

template <typename Real>
void linear_forward(Real* y, const Real* x, const Real* w, const std::type_identity_t<Real>* b, int64_t M,
                    int64_t n_in, int64_t n_out, bool accumulate) {
  if (M <= 0 || n_out <= 0) return;
  Real beta = accumulate ? Real(1) : Real(0);
  if (b != nullptr) {
    parallel_for(
        M,
        [&](int64_t i) {
          Real* row = y + i * n_out;
          if (accumulate) {
            for (int64_t j = 0; j < n_out; ++j) row[j] += b[j];
          } else {
            for (int64_t j = 0; j < n_out; ++j) row[j] = b[j];
          }
        },
        n_out);
    beta = Real(1);
  }
  if (n_in <= 0) {
    if (!accumulate && b == nullptr) std::fill(y, y + M * n_out, Real(0));
    return;
  }
  gemm(CblasNoTrans, CblasNoTrans, M, n_out, n_in, Real(1), x, n_in, w, n_out, beta, y, n_out);
}

template <typename Real>
void linear_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dw, std::type_identity_t<Real>* db,
                     const Real* dy, const Real* x, const Real* w, int64_t M, int64_t n_in, int64_t n_out) {
  if (M <= 0 || n_out <= 0) return;
  if (dx != nullptr && n_in > 0)  // dx [M, n_in] += dy [M, n_out] @ W^T
    gemm(CblasNoTrans, CblasTrans, M, n_in, n_out, Real(1), dy, n_out, w, n_out, Real(1), dx, n_in);
  if (dw != nullptr && n_in > 0)  // dW [n_in, n_out] += x^T @ dy
    gemm(CblasTrans, CblasNoTrans, n_in, n_out, M, Real(1), x, n_in, dy, n_out, Real(1), dw, n_out);
  if (db != nullptr) add_column_sums(db, dy, M, n_out);
}

template <typename Real>
void matmul_transposed_forward(Real* y, const Real* x, const Real* w, int64_t M, int64_t k, int64_t n) {
  if (M <= 0 || n <= 0) return;
  if (k <= 0) {
    std::fill(y, y + M * n, Real(0));
    return;
  }
  gemm(CblasNoTrans, CblasTrans, M, n, k, Real(1), x, k, w, k, Real(0), y, n);
}

template <typename Real>
void matmul_transposed_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dw, const Real* dy,
                                const Real* x, const Real* w, int64_t M, int64_t k, int64_t n) {
  if (M <= 0 || n <= 0 || k <= 0) return;
  if (dx != nullptr)  // dx [M, k] += dy [M, n] @ w [n, k]
    gemm(CblasNoTrans, CblasNoTrans, M, k, n, Real(1), dy, n, w, k, Real(1), dx, k);
  if (dw != nullptr)  // dw [n, k] += dy^T @ x
    gemm(CblasTrans, CblasNoTrans, n, k, M, Real(1), dy, n, x, k, Real(1), dw, k);
}

#define SMT_INSTANTIATE(Real)                                                                                   \
  template void add_column_sums<Real>(Real*, const Real*, int64_t, int64_t);                                   \
  template void linear_forward<Real>(Real*, const Real*, const Real*, const Real*, int64_t, int64_t, int64_t,  \
                                     bool);                                                                     \
  template void linear_backward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*, int64_t,     \
                                      int64_t, int64_t);                                                        \
  template void matmul_transposed_forward<Real>(Real*, const Real*, const Real*, int64_t, int64_t, int64_t);   \
  template void matmul_transposed_backward<Real>(Real*, Real*, const Real*, const Real*, const Real*, int64_t, \
                                                 int64_t, int64_t);
SMT_INSTANTIATE(float)
SMT_INSTANTIATE(double)
#undef SMT_INSTANTIATE

}  // namespace smt::cpu
