// Shared by the GPU test files: whether a CUDA device is usable (cached), and why not.
#pragma once
#include <cuda_runtime.h>

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
