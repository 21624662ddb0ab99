// A CPU emulation of the CUDA features the flash attention kernels use, so that the very kernel source
// (src/kernels/cuda/flash_attention_kernels.cuh, compiled with SMT_FLASH_EMULATE) runs in the CPU tests:
// one std::thread per CUDA thread of a block, blocks one after the other; __syncthreads / __syncwarp are
// std::barrier waits; the warp-level instructions exchange their operands through per-warp arrays between
// two warp barriers and compute what the PTX ISA specifies:
//   ldmatrix .x4 (.trans): lane l gives the row address of row l % 8 of matrix l / 8; lane l receives, per
//     matrix i, the elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) (.trans: (2 (l % 4), l / 4) and
//     (2 (l % 4) + 1, l / 4)) packed low / high;
//   mma.m16n8k16 (bf16 in, fp32 accumulate): a_r = A(l/4 + 8 (r%2), 2 (l%4) + 8 (r/2) + {0,1}),
//     b_r = B(2 (l%4) + 8 r + {0,1}, l/4), c_r = C(l/4 + 8 (r/2), 2 (l%4) + r%2);
//   cp.async: copies are queued per thread and performed at cp.async.wait_group for all but the newest N
//     committed groups (shared memory starts filled with a poison pattern, so a read before the wait shows);
//   shuffles, atomicAdd (a mutex), ex2 (exp2f), bf16 conversions (round to nearest even).
// Include this header before kernels/cuda/flash_attention_kernels.cuh.
#pragma once
#define SMT_FLASH_EMULATE 1

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define SMT_FLASH_SMEM(name) unsigned char* name = ::smt::emu::cta_smem()

namespace smt::emu {
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
}  // namespace smt::emu

// The CUDA built-in variables, per emulated thread.
inline thread_local smt::emu::Dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace smt::emu {

struct WarpCtx {
  std::barrier<> bar{32};
  const void* addr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  float f[32];
};

struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;  // 0 < bytes: copy; the zero-fill copies have src == nullptr
  int size;
};

struct CtaCtx {
  CtaCtx(int threads, size_t smem_bytes) : bar(threads), storage((smem_bytes + 15) / 16 + 1) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<WarpCtx>());
    std::memset(storage.data(), 0x7F, storage.size() * 16);  // poison: bf16 0x7F7F ~ 3.4e38, float ~ 3.4e38
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<WarpCtx>> warps;
  struct alignas(16) Chunk {
    unsigned char b[16];
  };
  std::vector<Chunk> storage;
};

inline thread_local CtaCtx* t_cta = nullptr;
inline thread_local WarpCtx* t_warp = nullptr;
inline thread_local int t_lane = 0;
// cp.async groups of this thread: committed groups (oldest first) and the open one.
inline thread_local std::deque<std::vector<PendingCopy>> t_groups;
inline thread_local std::vector<PendingCopy> t_open;
inline std::mutex g_atomic_mu;

inline unsigned char* cta_smem() { return t_cta->storage.data()->b; }
inline void warp_sync() { t_warp->bar.arrive_and_wait(); }

inline void perform(const std::vector<PendingCopy>& group) {
  for (const PendingCopy& c : group) {
    if (c.src != nullptr) std::memcpy(c.dst, c.src, c.bytes);
    if (c.bytes < c.size) std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, c.size - c.bytes);
  }
}

// Runs kernel(args) over the grid, block after block, with `threads` threads each.
template <typename Kernel, typename Args>
void launch(Kernel kernel, Dim3 grid, int threads, size_t smem_bytes, const Args& args) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        CtaCtx cta(threads, smem_bytes);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = Dim3{unsigned(t), 0, 0};
            blockIdx = Dim3{x, y, z};
            gridDim = grid;
            blockDim = Dim3{unsigned(threads), 1, 1};
            t_cta = &cta;
            t_warp = cta.warps[t / 32].get();
            t_lane = t % 32;
            t_groups.clear();
            t_open.clear();
            kernel(args);
            for (auto& g : t_groups) perform(g);  // a thread may exit with copies in flight
            perform(t_open);
          });
        for (auto& th : pool) th.join();
      }
}

}  // namespace smt::emu

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

inline uint16_t f2bf_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>((u >> 16) | ((u & 0xFFFFu) ? 0x40u : 0u));
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf_bits2f(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __log2f(float x) { return std::log2(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline void __syncthreads() { emu::t_cta->bar.arrive_and_wait(); }
inline void __syncwarp() { emu::warp_sync(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::WarpCtx* w = emu::t_warp;
  w->f[emu::t_lane] = v;
  emu::warp_sync();
  const float r = w->f[emu::t_lane ^ lane_mask];
  emu::warp_sync();
  return r;
}
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lock(emu::g_atomic_mu);
  const float old = *p;
  *p = old + v;
  return old;
}

inline void cp_async_16(void* dst, const void* src, bool pred) {
  emu::t_open.push_back({dst, pred ? src : nullptr, pred ? 16 : 0, 16});
}
inline void cp_async_4(void* dst, const void* src, bool pred) {
  emu::t_open.push_back({dst, pred ? src : nullptr, pred ? 4 : 0, 4});
}
inline void cp_async_commit() {
  emu::t_groups.push_back(std::move(emu::t_open));
  emu::t_open.clear();
}
template <int kPending>
inline void cp_async_wait() {
  while (static_cast<int>(emu::t_groups.size()) > kPending) {
    emu::perform(emu::t_groups.front());
    emu::t_groups.pop_front();
  }
}

inline void ldmatrix_common(uint32_t (&r)[4], const void* row, bool trans) {
  emu::WarpCtx* w = emu::t_warp;
  const int l = emu::t_lane;
  w->addr[l] = row;
  emu::warp_sync();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* p = static_cast<const uint16_t*>(w->addr[8 * i + l / 4]);
      lo = p[2 * (l % 4)];
      hi = p[2 * (l % 4) + 1];
    } else {
      lo = static_cast<const uint16_t*>(w->addr[8 * i + 2 * (l % 4)])[l / 4];
      hi = static_cast<const uint16_t*>(w->addr[8 * i + 2 * (l % 4) + 1])[l / 4];
    }
    r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  emu::warp_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_common(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix_common(r, row, true); }

inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::WarpCtx* w = emu::t_warp;
  const int l = emu::t_lane;
  for (int r = 0; r < 4; ++r) w->a[l][r] = a[r];
  w->b[l][0] = b0;
  w->b[l][1] = b1;
  emu::warp_sync();
  auto half = [](uint32_t reg, int k) { return bf_bits2f(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xFFFFu)); };
  auto A = [&](int row, int k) { return half(w->a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k); };
  auto B = [&](int k, int n) { return half(w->b[n * 4 + (k % 8) / 2][k / 8], k); };
  for (int r = 0; r < 4; ++r) {
    const int row = l / 4 + 8 * (r / 2), col = 2 * (l % 4) + r % 2;
    float sum = c[r];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    c[r] = sum;
  }
  emu::warp_sync();
}
inline float fast_exp2(float x) { return std::exp2(x); }
inline uint32_t pack_bf16(float lo, float hi) { return uint32_t(f2bf_bits(lo)) | (uint32_t(f2bf_bits(hi)) << 16); }

}  // namespace smt::gpu::flash_impl
