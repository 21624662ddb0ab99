// Shared by the GPU test files: whether a CUDA device is usable (cached), and why not.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>

inline bool gpu_available(std::string* why) {
  static int state = -1;  // -1 unknown, 0 no, 1 yes
  static std::string reason;
  if (state < 0) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      reason = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
      (void)cudaGetLastError();
      state = 0;
    } else if (n == 0) {
      reason = "cudaGetDeviceCount returned 0 devices";
      state = 0;
    } else {
      state = 1;
    }
  }
  if (why != nullptr) *why = reason;
  return state == 1;
}

// A test with a CUDA stream and a cuBLAS handle on it (fp32 math, no TF32); skipped, saying why, where
// no device is usable. Failures of the setup calls fail the test (ADD_FAILURE + skip of the body).
class GpuStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
    if (cudaStreamCreate(&stream) != cudaSuccess || cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS)
      GTEST_FAIL() << "CUDA stream / cuBLAS handle setup failed";
  }
  void TearDown() override {
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    if (handle != nullptr) cublasDestroy(handle);
    if (stream != nullptr) cudaStreamDestroy(stream);
    handle = nullptr;
    stream = nullptr;
  }
  void sync() const {
    const cudaError_t err = cudaStreamSynchronize(stream);
    ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  }

  cudaStream_t stream = nullptr;
  cublasHandle_t handle = nullptr;
};
