// The flash attention kernels (src/kernels/cuda/flash_attention_kernels.cuh, compiled with SMT_FLASH_EMULATE)
// on the CPU emulation of tests/cuda_emu (fibers.h: one fiber per CUDA thread, barriers, deadlock check,
// shuffled schedules; warp_ops.h: ldmatrix, mma.sync, cp.async, shuffles as the PTX ISA specifies them), with
// the kernels' own bf16 / vector types as plain structs, so that the test needs no CUDA headers.
// g_eager_copies selects eager copies with shuffled threads (a missing __syncthreads shows) or deferred
// copies in order (a missing cp.async wait shows).
// Include this header before kernels/cuda/flash_attention_kernels.cuh.
#pragma once
#define SMT_FLASH_EMULATE 1

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_emu/fibers.h"
#include "cuda_emu/warp_ops.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define SMT_FLASH_SMEM(name) unsigned char* name = ::smt::emu::cta_smem()

namespace smt::gpu::flash_impl {

struct bf16 {
  uint16_t x;
};
struct uint4 {
  uint32_t x, y, z, w;
};
struct float2 {
  float x, y;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __log2f(float x) { return std::log2(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline void __syncthreads() { emu::g_cta->bar.arrive_and_wait(); }
inline void __syncwarp() { emu::warp_sync(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) { return emu::shfl_xor(v, lane_mask); }
inline float atomicAdd(float* p, float v) {  // fibers on one thread: no race
  const float old = *p;
  *p = old + v;
  return old;
}

}  // namespace smt::gpu::flash_impl
