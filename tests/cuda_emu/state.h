// Shared state of the emulated CUDA build between the kernels' translation units (cuda_emu.h) and the
// emulated runtime (runtime.cpp): the device-allocation registry, launch errors, kernels' shared-memory limits.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace smt::emu {

// True if p lies in (or one past the end of) a live cudaMalloc / cudaMallocAsync / cudaMallocHost allocation.
bool is_device_pointer(const void* p);
// Prints `what` and records the error: cudaErrorIllegalAddress is sticky (every later call returns it, as a
// fault corrupts a CUDA context), others are returned once by cudaGetLastError.
void fail_launch(cudaError_t err, const std::string& what);
cudaError_t sticky_error();
// The dynamic shared memory a launch may ask for: 48 KiB, or the largest limit cudaFuncSetAttribute set for
// any kernel (a launch cannot name its kernel when nvcc deduces its template arguments).
size_t dynamic_smem_limit();
void count_launch();
// Kernel launches so far (for tests of the emulation itself).
long long launches();

}  // namespace smt::emu
