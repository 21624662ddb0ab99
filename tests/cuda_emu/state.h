// Shared state of the emulated CUDA build between the kernels' translation units (cuda_emu.h) and the
// emulated runtime (runtime.cpp): the device-allocation registry, launch errors, kernels' shared-memory limits.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace smt::emu {

// True if p lies in (or one past the end of) a live cudaMalloc / cudaMallocAsync / cudaMallocHost allocation
// (kernels may read pinned host memory).
bool is_device_pointer(const void* p);
// Prints `what` and records the error: cudaErrorIllegalAddress is sticky (every later call returns it, as a
// fault corrupts a CUDA context), others are returned once by cudaGetLastError.
void fail_launch(cudaError_t err, const std::string& what);
cudaError_t sticky_error();
// The dynamic shared memory a launch of `kernel` may ask for: 48 KiB unless cudaFuncSetAttribute raised it
// (kernel null: 48 KiB).
size_t dynamic_smem_limit(const void* kernel);
void count_launch();
// Kernel launches so far (for tests of the emulation itself).
long long launches();

}  // namespace smt::emu
