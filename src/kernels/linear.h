// Dense linear layer y = x @ W + b through BLAS (OpenBLAS sgemm/dgemm on the CPU).
// Shapes: x [M, n_in], W [n_in, n_out], b [n_out] (nullable), y [M, n_out].
// Templates over the scalar (instantiated for float and double); nullable pointers and scalars are
// non-deduced (std::type_identity_t) so that `nullptr` can be passed.
#pragma once
#include <cstdint>
#include <type_traits>

namespace smt::cpu {

// y = x @ W (+ b). If accumulate, y += x @ W (+ b) instead of overwriting.
template <typename Real>
void linear_forward(Real* y, const Real* x, const Real* w, const std::type_identity_t<Real>* b, int64_t M,
                    int64_t n_in, int64_t n_out, bool accumulate = false);
// dx += dy @ W^T ; dW += x^T @ dy ; db += sum_rows(dy). Each output nullable.
template <typename Real>
void linear_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dw, std::type_identity_t<Real>* db,
                     const Real* dy, const Real* x, const Real* w, int64_t M, int64_t n_in, int64_t n_out);

// y [M, n] = x [M, k] @ w^T where w is [n, k] (tied LM head: logits = h @ E^T).
template <typename Real>
void matmul_transposed_forward(Real* y, const Real* x, const Real* w, int64_t M, int64_t k, int64_t n);
// dx += dy @ w ; dw += dy^T @ x. Each output nullable.
template <typename Real>
void matmul_transposed_backward(std::type_identity_t<Real>* dx, std::type_identity_t<Real>* dw, const Real* dy,
                                const Real* x, const Real* w, int64_t M, int64_t k, int64_t n);

// Column sums: out[j] += sum_i a[i, j] for a [M, n] (bias gradients); fixed row blocks, so the
// result does not depend on the thread count.
template <typename Real>
void add_column_sums(Real* out, const Real* a, int64_t M, int64_t n);

}  // namespace smt::cpu
