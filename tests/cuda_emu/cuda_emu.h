// Prelude of the emulated CUDA build (cmake --preset cuda-emu): every src/**/*.cu is rewritten by
// tests/cuda_emu/rewrite.sed (kernel<<<grid, block, smem, stream>>>(args) becomes
// kernel * ::smt::emu::LaunchConfig(__FILE__, __LINE__, grid, block, smem, stream)(args); extern __shared__
// arrays become pointers to the block's dynamic shared memory), compiled as C++ by the host compiler with
// this header force-included, and linked against tests/cuda_emu/runtime.cpp (the CUDA runtime, cuBLAS and
// NCCL calls the project makes, on host memory). Kernels run on fibers (fibers.h): every thread of every
// block, barriers and warp instructions as on the GPU (warp_ops.h). So the GPU tests (tests/gpu) run on a
// machine without a GPU: kernels, launch configurations, cuBLAS argument orders, host/device copies.
//
// What the emulation checks beyond the results: block size <= 1024; dynamic shared memory above 48 KiB only
// after cudaFuncSetAttribute raised the kernel's limit, and never above the device's opt-in limit; pointer
// arguments of kernels, cuBLAS and NCCL calls and the device side of copies lie in device allocations
// (cudaMalloc*, cudaMallocHost); deadlocks at barriers. What it cannot: races between streams (every call
// runs at once, in program order), memory-model and timing effects, the speed of anything.
#pragma once
#define SMT_FLASH_EMULATE 1

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_emu/fibers.h"
#include "cuda_emu/state.h"
#include "cuda_emu/warp_ops.h"

#undef __shared__
#define __shared__ static  // one block runs at a time: a static local is the block's shared memory
#undef __launch_bounds__
#define __launch_bounds__(...)
#define SMT_FLASH_SMEM(name) unsigned char* name = ::smt::emu::cta_smem()

// Shuffled thread order with warp stalls and cp.async copies landing early or late at random (fibers.h), so
// that a missing barrier or wait shows; SMT_EMU_SCHEDULE=in-order runs threads in order with copies at the wait.
namespace smt::emu {
inline const bool g_schedule_from_env = [] {
  const char* e = std::getenv("SMT_EMU_SCHEDULE");
  const bool in_order = e != nullptr && std::string(e) == "in-order";
  g_shuffle_threads = g_random_copies = !in_order;
  return true;
}();
}  // namespace smt::emu

// ---- device built-ins ----
inline void __syncthreads() { smt::emu::g_cta->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { smt::emu::warp_sync(); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  return smt::emu::shfl_xor(v, lane_mask);
}
template <typename T>
T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
  return smt::emu::shfl_idx(v, src_lane);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  return smt::emu::shfl_down(v, int(delta));
}
template <typename T>
unsigned __match_any_sync(unsigned, T v) {
  return smt::emu::match_any(v);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __log2f(float x) { return std::log2(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
// Atomics: the fibers of a block share one OS thread and blocks run one after the other: no race.
template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }

// ---- the flash kernels' types (their PTX wrappers are in warp_ops.h) ----
namespace smt::gpu::flash_impl {
using bf16 = __nv_bfloat16;
inline float bits_to_float(uint32_t u) { return __uint_as_float(u); }
}  // namespace smt::gpu::flash_impl

// The runtime's template form for kernels (nvcc's headers declare it only when compiling CUDA).
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- kernel launches (see rewrite.py) ----
namespace smt::emu {

template <typename T>
void check_pointer_argument(const T& arg, int index, const std::string& where) {
  if constexpr (std::is_pointer_v<T>) {
    if (arg != nullptr && !is_device_pointer(arg))
      fail_launch(cudaErrorIllegalAddress,
                  where + ": kernel argument " + std::to_string(index + 1) + " is not a device pointer");
  }
}

// Static __shared__ arrays (rewrite.py: `__shared__ T name[N];` -> `auto& name = static_shared<T[N], __LINE__>();`):
// one storage per declaration, filled with the 0x7F poison at the first use in each block, like the
// dynamic shared memory, so a read before any write in the block shows.
template <typename T, int kLine>
T& static_shared() {
  alignas(16) static T storage;
  static uint64_t serial = 0;
  if (serial != g_block_serial) {
    serial = g_block_serial;
    std::memset(static_cast<void*>(&storage), 0x7F, sizeof(T));
  }
  return storage;
}

// The address that identifies a kernel (a function, or a pointer to one) for its shared-memory limit.
template <typename F>
const void* kernel_address(F* kernel) {
  return reinterpret_cast<const void*>(kernel);
}

struct LaunchConfig {
  LaunchConfig(const char* file, int line, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr)
      : file(file), line(line), grid(grid), block(block), smem(smem) {}

  // body() is the kernel call as written; args are its arguments (pointer arguments must be device pointers).
  // kernel: the kernel's address where the launch asks for dynamic shared memory (else null: 48 KiB limit).
  template <typename Body, typename... A>
  void run(const void* kernel, Body&& body, const A&... args) const {
    const std::string where = std::string(file) + ":" + std::to_string(line);
    if (block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1)
      return fail_launch(cudaErrorInvalidConfiguration,
                         where + ": block of " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
                             std::to_string(block.z) + " threads (the emulator runs 1-D blocks of <= 1024)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
      return fail_launch(cudaErrorInvalidConfiguration, where + ": empty or oversized grid " + std::to_string(grid.x) +
                                                            "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z));
    const size_t limit = dynamic_smem_limit(kernel);
    if (smem > limit)
      return fail_launch(cudaErrorInvalidValue, where + ": " + std::to_string(smem) +
                                                    " bytes of dynamic shared memory, the kernel's limit is " +
                                                    std::to_string(limit) + " (above 48 KiB: cudaFuncSetAttribute)");
    int index = 0;
    (check_pointer_argument(args, index++, where), ...);
    if (sticky_error() != cudaSuccess) return;
    count_launch();
    run_grid(std::forward<Body>(body), Dim3{grid.x, grid.y, grid.z}, static_cast<int>(block.x), smem);
  }

  const char* file;
  int line;
  dim3 grid, block;
  size_t smem;
};

}  // namespace smt::emu
