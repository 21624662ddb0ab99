// For GEMMs with a bf16 C: cuBLAS may otherwise reduce split-K partial sums in bf16. Within this scope the
// handle forbids that (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), so only the final fp32 result is
// rounded; the handle's math mode is restored when the scope ends, also when a GEMM call throws.
#pragma once
#include <cublas_v2.h>

#include "core/cuda_check.h"

namespace smt::gpu::detail {

class ExactBf16OutputScope {
 public:
  explicit ExactBf16OutputScope(cublasHandle_t handle) : handle_(handle) {
    SMT_CUBLAS_CHECK(cublasGetMathMode(handle_, &mode_));
    SMT_CUBLAS_CHECK(cublasSetMathMode(
        handle_, static_cast<cublasMath_t>(mode_ | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  ~ExactBf16OutputScope() { cublasSetMathMode(handle_, mode_); }  // only fails for an invalid handle
  ExactBf16OutputScope(const ExactBf16OutputScope&) = delete;
  ExactBf16OutputScope& operator=(const ExactBf16OutputScope&) = delete;

 private:
  cublasHandle_t handle_;
  cublasMath_t mode_ = CUBLAS_DEFAULT_MATH;
};

}  // namespace smt::gpu::detail
