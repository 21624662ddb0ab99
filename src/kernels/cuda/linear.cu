// CUDA dense linear layer and transposed matmul through cuBLAS (cublasGemmEx, fp32, CUBLAS_COMPUTE_32F),
// row-major via the transpose trick (row-major C = A B  <=>  column-major C^T = B^T A^T: swap the operands
// and M/N, keep the transpose flags); bias broadcast and deterministic column sums as small kernels.
// Invariants: weights [in, out]; backward accumulates (beta = 1) into every non-null output.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

constexpr int64_t kRowBlock = 256;

__global__ void bias_rows_kernel(float* y, const float* b, int64_t M, int64_t n, bool accumulate) {
  const int64_t total = M * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float bj = b[i % n];
    y[i] = accumulate ? y[i] + bj : bj;
  }
}

// partial[blk, j] = sum of a[i, j] over the rows of block blk (float, as the CPU). grid (ceil(n/256), blocks).
__global__ void column_sums_partial_kernel(float* partial, const float* a, int64_t M, int64_t n) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t blk = blockIdx.y;
  if (j >= n) return;
  const int64_t i0 = blk * kRowBlock, i1 = min(M, i0 + kRowBlock);
  float acc = 0.0f;
  for (int64_t i = i0; i < i1; ++i) acc += a[i * n + j];
  partial[blk * n + j] = acc;
}

__global__ void column_sums_reduce_kernel(float* out, const float* partial, int64_t num_blocks, int64_t n) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  float acc = 0.0f;
  for (int64_t b = 0; b < num_blocks; ++b) acc += partial[b * n + j];
  out[j] += acc;
}

int to_int(int64_t v, const char* what) {
  SMT_CHECK(v >= 0 && v <= INT_MAX, "gpu gemm: ", what, " = ", v, " does not fit cuBLAS's int");
  return static_cast<int>(v);
}

}  // namespace

void gemm_row_major(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                    cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  SMT_CUBLAS_CHECK(cublasSetStream(handle, stream));
  // Column-major view: C^T [N, M] = op(B)^T [N, K] * op(A)^T [K, M].
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SMT_CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, to_int(N, "N"), to_int(M, "M"), to_int(K, "K"), &alpha, B,
                                CUDA_R_32F, to_int(ldb, "ldb"), A, CUDA_R_32F, to_int(lda, "lda"), &beta, C,
                                CUDA_R_32F, to_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void add_column_sums(float* out, const float* a, int64_t M, int64_t n, cudaStream_t stream) {
  if (M <= 0 || n <= 0 || out == nullptr) return;
  const int64_t num_blocks = (M + kRowBlock - 1) / kRowBlock;
  SMT_CHECK(num_blocks <= 65535, "gpu::add_column_sums: too many rows for the grid: ", M);
  StreamBuffer<float> partial(static_cast<size_t>(num_blocks * n), stream);
  const unsigned cols = static_cast<unsigned>((n + detail::kThreads - 1) / detail::kThreads);
  column_sums_partial_kernel<<<dim3(cols, static_cast<unsigned>(num_blocks)), detail::kThreads, 0, stream>>>(
      partial.data(), a, M, n);
  SMT_CUDA_CHECK_LAUNCH();
  column_sums_reduce_kernel<<<cols, detail::kThreads, 0, stream>>>(out, partial.data(), num_blocks, n);
  SMT_CUDA_CHECK_LAUNCH();
}

void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t n_in,
                    int64_t n_out, bool accumulate, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0) return;
  float beta = accumulate ? 1.0f : 0.0f;
  if (b != nullptr) {
    bias_rows_kernel<<<detail::grid_for(M * n_out), detail::kThreads, 0, stream>>>(y, b, M, n_out, accumulate);
    SMT_CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  }
  if (n_in <= 0) {
    if (!accumulate && b == nullptr) SMT_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * M * n_out, stream));
    return;
  }
  gemm_row_major(false, false, M, n_out, n_in, 1.0f, x, n_in, w, n_out, beta, y, n_out, handle, stream);
}

void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M,
                     int64_t n_in, int64_t n_out, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0) return;
  if (dx != nullptr && n_in > 0)  // dx [M, n_in] += dy [M, n_out] @ W^T
    gemm_row_major(false, true, M, n_in, n_out, 1.0f, dy, n_out, w, n_out, 1.0f, dx, n_in, handle, stream);
  if (dw != nullptr && n_in > 0)  // dW [n_in, n_out] += x^T @ dy
    gemm_row_major(true, false, n_in, n_out, M, 1.0f, x, n_in, dy, n_out, 1.0f, dw, n_out, handle, stream);
  if (db != nullptr) add_column_sums(db, dy, M, n_out, stream);
}

void matmul_transposed_forward(float* y, const float* x, const float* w, int64_t M, int64_t k, int64_t n,
                               cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n <= 0) return;
  if (k <= 0) {
    SMT_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * M * n, stream));
    return;
  }
  gemm_row_major(false, true, M, n, k, 1.0f, x, k, w, k, 0.0f, y, n, handle, stream);
}

void matmul_transposed_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t M,
                                int64_t k, int64_t n, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n <= 0 || k <= 0) return;
  if (dx != nullptr)  // dx [M, k] += dy [M, n] @ w [n, k]
    gemm_row_major(false, false, M, k, n, 1.0f, dy, n, w, k, 1.0f, dx, k, handle, stream);
  if (dw != nullptr)  // dw [n, k] += dy^T @ x
    gemm_row_major(true, false, n, k, M, 1.0f, dy, n, x, k, 1.0f, dw, k, handle, stream);
}

}  // namespace smt::gpu
