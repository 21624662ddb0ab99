// Error checks for CUDA runtime and cuBLAS calls: each throws smt::Error with file:line, the failing
// expression and the library's error string. SMT_CUDA_CHECK_LAUNCH() checks the last kernel launch
// (cudaGetLastError: launch-configuration errors; asynchronous faults surface at the next sync).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace smt::detail {

inline const char* cublas_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_<unknown>";
  }
}

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw ::smt::Error(concat("CUDA error at ", file, ":", line, ": ", expr, " -> ", cudaGetErrorName(err), " (",
                            cudaGetErrorString(err), ")"));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
  throw ::smt::Error(
      concat("cuBLAS error at ", file, ":", line, ": ", expr, " -> ", cublas_status_string(st), " (", int(st), ")"));
}

}  // namespace smt::detail

#define SMT_CUDA_CHECK(call)                                                                    \
  do {                                                                                          \
    const cudaError_t smt_cuda_err_ = (call);                                                   \
    if (smt_cuda_err_ != cudaSuccess) ::smt::detail::throw_cuda_error(smt_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define SMT_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                              \
    const cublasStatus_t smt_cublas_st_ = (call);                                                   \
    if (smt_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::smt::detail::throw_cublas_error(smt_cublas_st_, #call, __FILE__, __LINE__);                 \
  } while (0)

#define SMT_CUDA_CHECK_LAUNCH()                                                                          \
  do {                                                                                                   \
    const cudaError_t smt_cuda_err_ = cudaGetLastError();                                                \
    if (smt_cuda_err_ != cudaSuccess)                                                                    \
      ::smt::detail::throw_cuda_error(smt_cuda_err_, "kernel launch", __FILE__, __LINE__);               \
  } while (0)
