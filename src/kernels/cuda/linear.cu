// CUDA dense linear layer and transposed matmul through cuBLAS (cublasGemmEx, CUBLAS_COMPUTE_32F, fp32 C;
// A/B fp32 or bf16 as their GemmOperand says), row-major via the transpose trick (row-major C = A B  <=>
// column-major C^T = B^T A^T: swap the operands and M/N, keep the transpose flags); bias broadcast and
// deterministic column sums as small kernels.
// Invariants: weights [in, out]; backward accumulates (beta = 1) into every non-null output (except
// linear_backward_bf16's dx with overwrite_dx, beta 0, and its dx_bf16, written); with bf16
// operands the backward's dy is rounded to bf16 once (stream temporary) and bias gradients use the fp32 dy.
#include <climits>
#include <optional>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/exact_bf16_output.h"
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

cudaDataType_t cuda_type(Precision p) { return p == Precision::kBf16 ? CUDA_R_16BF : CUDA_R_32F; }

void check_same_dtype(GemmOperand a, GemmOperand b, const char* who) {
  SMT_CHECK(a.dtype == b.dtype, who, ": operands of different precision (", precision_name(a.dtype), " and ",
            precision_name(b.dtype), ")");
}

// dy as an operand of the same precision as x/w: itself (fp32) or a bf16 copy kept alive in `holder`.
GemmOperand grad_operand(const float* dy, int64_t n, Precision p,
                         std::optional<StreamBuffer<__nv_bfloat16>>& holder, cudaStream_t stream) {
  if (p == Precision::kFp32) return GemmOperand(dy);
  holder.emplace(static_cast<size_t>(n), stream);
  cast_fp32_to_bf16(holder->data(), dy, n, stream);
  return GemmOperand(static_cast<const __nv_bfloat16*>(holder->data()));
}

// Row-major C [M, N] (of c_type) = alpha op(A) op(B) + beta C through one cublasGemmEx.
void gemm_ex(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, GemmOperand A, int64_t lda,
             GemmOperand B, int64_t ldb, float beta, void* C, cudaDataType_t c_type, int64_t ldc,
             cublasHandle_t handle, cudaStream_t stream) {
  check_same_dtype(A, B, "gpu::gemm_row_major");
  const cudaDataType_t ab_type = cuda_type(A.dtype);
  SMT_CUBLAS_CHECK(cublasSetStream(handle, stream));
  // Column-major view: C^T [N, M] = op(B)^T [N, K] * op(A)^T [K, M].
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SMT_CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, to_int(N, "N"), to_int(M, "M"), to_int(K, "K"), &alpha, B.ptr,
                                ab_type, to_int(ldb, "ldb"), A.ptr, ab_type, to_int(lda, "lda"), &beta, C, c_type,
                                to_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// A bf16 C through gemm_ex with only the final rounding (beta 0).
void gemm_bf16_out(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, GemmOperand A, int64_t lda,
                   GemmOperand B, int64_t ldb, __nv_bfloat16* C, int64_t ldc, cublasHandle_t handle,
                   cudaStream_t stream) {
  const detail::ExactBf16OutputScope exact(handle);
  gemm_ex(trans_a, trans_b, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, CUDA_R_16BF, ldc, handle, stream);
}

// The backward's GEMMs from dy as an operand of x's and w's precision: dx (+)= dy W^T (beta dx_beta), or
// dx_bf16 = bf16(dy W^T); dW += x^T dy. Each output nullable.
void backward_gemms(float* dx, float dx_beta, __nv_bfloat16* dx_bf16, float* dw, GemmOperand dy, GemmOperand x,
                    GemmOperand w, int64_t M, int64_t n_in, int64_t n_out, cublasHandle_t handle,
                    cudaStream_t stream) {
  if (dx != nullptr)  // dx [M, n_in] (+)= dy [M, n_out] @ W^T
    gemm_ex(false, true, M, n_in, n_out, 1.0f, dy, n_out, w, n_out, dx_beta, dx, CUDA_R_32F, n_in, handle, stream);
  if (dx_bf16 != nullptr)  // dx_bf16 = bf16(dy @ W^T), rounded once at the end
    gemm_bf16_out(false, true, M, n_in, n_out, dy, n_out, w, n_out, dx_bf16, n_in, handle, stream);
  if (dw != nullptr)  // dW [n_in, n_out] += x^T @ dy
    gemm_ex(true, false, n_in, n_out, M, 1.0f, x, n_in, dy, n_out, 1.0f, dw, CUDA_R_32F, n_out, handle, stream);
}

}  // namespace

void gemm_row_major(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, GemmOperand A,
                    int64_t lda, GemmOperand B, int64_t ldb, float beta, float* C, int64_t ldc,
                    cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  gemm_ex(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, CUDA_R_32F, ldc, handle, stream);
}

void gemm_row_major_bf16_out(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const __nv_bfloat16* A,
                             int64_t lda, const __nv_bfloat16* B, int64_t ldb, __nv_bfloat16* C, int64_t ldc,
                             cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  gemm_bf16_out(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, handle, stream);
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

void linear_forward(float* y, GemmOperand x, GemmOperand w, const float* b, int64_t M, int64_t n_in, int64_t n_out,
                    bool accumulate, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0) return;
  check_same_dtype(x, w, "gpu::linear_forward");
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

void linear_forward_bf16(__nv_bfloat16* y, GemmOperand x, GemmOperand w, int64_t M, int64_t n_in, int64_t n_out,
                         cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0) return;
  SMT_CHECK(x.dtype == Precision::kBf16 && w.dtype == Precision::kBf16,
            "gpu::linear_forward_bf16: needs bf16 operands");
  SMT_CHECK(n_in > 0, "gpu::linear_forward_bf16: n_in must be positive");
  gemm_bf16_out(false, false, M, n_out, n_in, x, n_in, w, n_out, y, n_out, handle, stream);
}

void linear_backward(float* dx, float* dw, float* db, const float* dy, GemmOperand x, GemmOperand w, int64_t M,
                     int64_t n_in, int64_t n_out, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0) return;
  check_same_dtype(x, w, "gpu::linear_backward");
  const bool gemms = (dx != nullptr || dw != nullptr) && n_in > 0;
  std::optional<StreamBuffer<__nv_bfloat16>> dy_bf16;
  if (gemms) {
    const GemmOperand g = grad_operand(dy, M * n_out, x.dtype, dy_bf16, stream);
    backward_gemms(dx, 1.0f, nullptr, dw, g, x, w, M, n_in, n_out, handle, stream);
  }
  if (db != nullptr) add_column_sums(db, dy, M, n_out, stream);
}

void linear_backward_bf16(const LinearGradsBf16& grads, const __nv_bfloat16* dy, GemmOperand x, GemmOperand w,
                          int64_t M, int64_t n_in, int64_t n_out, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n_out <= 0 || n_in <= 0) return;
  SMT_CHECK(x.dtype == Precision::kBf16 && w.dtype == Precision::kBf16,
            "gpu::linear_backward_bf16: needs bf16 operands");
  SMT_CHECK(grads.dx == nullptr || grads.dx_bf16 == nullptr, "gpu::linear_backward_bf16: dx and dx_bf16 both given");
  backward_gemms(grads.dx, grads.overwrite_dx ? 0.0f : 1.0f, grads.dx_bf16, grads.dw, GemmOperand(dy), x, w, M, n_in,
                 n_out, handle, stream);
}

void matmul_transposed_forward(float* y, GemmOperand x, GemmOperand w, int64_t M, int64_t k, int64_t n,
                               cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n <= 0) return;
  check_same_dtype(x, w, "gpu::matmul_transposed_forward");
  if (k <= 0) {
    SMT_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * M * n, stream));
    return;
  }
  gemm_row_major(false, true, M, n, k, 1.0f, x, k, w, k, 0.0f, y, n, handle, stream);
}

void matmul_transposed_backward(float* dx, float* dw, const float* dy, GemmOperand x, GemmOperand w, int64_t M,
                                int64_t k, int64_t n, cublasHandle_t handle, cudaStream_t stream) {
  if (M <= 0 || n <= 0 || k <= 0) return;
  check_same_dtype(x, w, "gpu::matmul_transposed_backward");
  if (dx == nullptr && dw == nullptr) return;
  std::optional<StreamBuffer<__nv_bfloat16>> dy_bf16;
  const GemmOperand g = grad_operand(dy, M * n, x.dtype, dy_bf16, stream);
  if (dx != nullptr)  // dx [M, k] += dy [M, n] @ w [n, k]
    gemm_row_major(false, false, M, k, n, 1.0f, g, n, w, k, 1.0f, dx, k, handle, stream);
  if (dw != nullptr)  // dw [n, k] += dy^T @ x
    gemm_row_major(true, false, n, k, M, 1.0f, g, n, x, k, 1.0f, dw, k, handle, stream);
}

}  // namespace smt::gpu
