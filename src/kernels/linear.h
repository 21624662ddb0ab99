// Dense linear layer y = x @ W + b through BLAS (OpenBLAS sgemm on the CPU).
// Shapes: x [M, n_in], W [n_in, n_out], b [n_out] (nullable), y [M, n_out].
#pragma once
#include <cstdint>

namespace smt::cpu {

// y = x @ W (+ b). If accumulate, y += x @ W (+ b) instead of overwriting.
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t n_in,
                    int64_t n_out, bool accumulate = false);
// dx += dy @ W^T ; dW += x^T @ dy ; db += sum_rows(dy). Each output nullable.
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M,
                     int64_t n_in, int64_t n_out);

// y [M, n] = x [M, k] @ w^T where w is [n, k] (tied LM head: logits = h @ E^T).
void matmul_transposed_forward(float* y, const float* x, const float* w, int64_t M, int64_t k, int64_t n);
// dx += dy @ w ; dw += dy^T @ x. Each output nullable.
void matmul_transposed_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t M,
                                int64_t k, int64_t n);

}  // namespace smt::cpu
