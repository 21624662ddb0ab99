// A CPU emulation of the CUDA features the flash attention kernels use, so that the very kernel source
// (src/kernels/cuda/flash_attention_kernels.cuh, compiled with SMT_FLASH_EMULATE) runs in the CPU tests:
// one fiber (ucontext, own stack) per CUDA thread of a block, blocks one after the other, scheduled round
// robin on the calling thread; __syncthreads / __syncwarp are barriers at which a fiber yields until all of
// its block / warp arrived (a round in which no fiber moves is a deadlock: abort with a message); the
// warp-level instructions exchange their operands through per-warp arrays between two warp barriers and
// compute what the PTX ISA specifies:
//   ldmatrix .x4 (.trans): lane l gives the row address of row l % 8 of matrix l / 8; lane l receives, per
//     matrix i, the elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) (.trans: (2 (l % 4), l / 4) and
//     (2 (l % 4) + 1, l / 4)) packed low / high;
//   mma.m16n8k16 (bf16 in, fp32 accumulate): a_r = A(l/4 + 8 (r%2), 2 (l%4) + 8 (r/2) + {0,1}),
//     b_r = B(2 (l%4) + 8 r + {0,1}, l/4), c_r = C(l/4 + 8 (r/2), 2 (l%4) + r%2);
//   cp.async: two modes (g_eager_copies). Deferred: copies are queued per thread and performed at
//     cp.async.wait_group for all but the newest N committed groups (shared memory starts filled with a
//     poison pattern, so a read before its wait shows). Eager: copies land at once, the fibers of a block
//     run in a pseudo-random order each round and whole warps stall for random rounds, so warps drift apart
//     between block barriers and a stage overwritten while another warp still reads it (a missing
//     __syncthreads) shows;
//   shuffles, atomicAdd, ex2 (exp2f), bf16 conversions (round to nearest even).
// Include this header before kernels/cuda/flash_attention_kernels.cuh.
#pragma once
#define SMT_FLASH_EMULATE 1

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
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

// The CUDA built-in variables (set to the running fiber's values before it resumes).
inline smt::emu::Dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace smt::emu {

inline uint64_t g_progress = 0;  // arrivals at barriers and finished fibers: a round without any is a deadlock
inline bool g_eager_copies = false;  // see the header

void yield();

struct Barrier {
  int expected = 0, count = 0;
  unsigned generation = 0;
  void arrive_and_wait() {
    ++g_progress;
    const unsigned g = generation;
    if (++count == expected) {
      count = 0;
      ++generation;
      return;
    }
    while (generation == g) yield();
  }
};

struct WarpCtx {
  Barrier bar{32};
  const void* addr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  float f[32];
};

struct PendingCopy {
  void* dst;
  const void* src;  // null: zero-fill only
  int bytes;        // copied bytes, then zeros up to size
  int size;
};

struct CtaCtx {
  CtaCtx(int threads, size_t smem_bytes) : storage((smem_bytes + 15) / 16 + 1) {
    bar.expected = threads;
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<WarpCtx>());
    std::memset(storage.data(), 0x7F, storage.size() * 16);  // poison: bf16 0x7F7F ~ 3.4e38, float ~ 3.4e38
  }
  Barrier bar;
  std::vector<std::unique_ptr<WarpCtx>> warps;
  struct alignas(16) Chunk {
    unsigned char b[16];
  };
  std::vector<Chunk> storage;
};

// One emulated CUDA thread.
struct Fiber {
  static constexpr size_t kStackBytes = 256 * 1024;
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  bool done = false;
  Dim3 tid;
  int lane = 0;
  WarpCtx* warp = nullptr;
  std::deque<std::vector<PendingCopy>> groups;  // committed cp.async groups, oldest first
  std::vector<PendingCopy> open;                // the group being built
};

inline ucontext_t g_main_ctx;
inline Fiber* g_self = nullptr;  // the running fiber
inline CtaCtx* g_cta = nullptr;
inline std::function<void()> g_body;

inline void yield() { swapcontext(&g_self->ctx, &g_main_ctx); }
inline unsigned char* cta_smem() { return g_cta->storage.data()->b; }
inline void warp_sync() { g_self->warp->bar.arrive_and_wait(); }

inline void perform(const std::vector<PendingCopy>& group) {
  for (const PendingCopy& c : group) {
    if (c.src != nullptr) std::memcpy(c.dst, c.src, c.bytes);
    if (c.bytes < c.size) std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, c.size - c.bytes);
  }
}

inline void fiber_entry() {
  g_body();
  for (auto& g : g_self->groups) perform(g);  // a thread may exit with copies in flight
  perform(g_self->open);
  g_self->done = true;
  ++g_progress;
}  // returns to g_main_ctx through uc_link

// Runs kernel(args) over the grid, block after block, with `threads` threads each.
template <typename Kernel, typename Args>
void launch(Kernel kernel, Dim3 grid, int threads, size_t smem_bytes, const Args& args) {
  std::vector<Fiber> fibers(threads);
  g_body = [&] { kernel(args); };
  gridDim = grid;
  blockDim = Dim3{unsigned(threads), 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        CtaCtx cta(threads, smem_bytes);
        g_cta = &cta;
        blockIdx = Dim3{x, y, z};
        for (int t = 0; t < threads; ++t) {
          Fiber& f = fibers[t];
          f.done = false;
          f.tid = Dim3{unsigned(t), 0, 0};
          f.lane = t % 32;
          f.warp = cta.warps[t / 32].get();
          f.groups.clear();
          f.open.clear();
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = Fiber::kStackBytes;
          f.ctx.uc_link = &g_main_ctx;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        // Eager mode: a new pseudo-random thread order each round, and each warp stalls in a round with
        // probability 1/2, so that warps drift apart between block barriers as on a GPU.
        std::vector<int> order(threads);
        for (int t = 0; t < threads; ++t) order[t] = t;
        const int num_warps = threads / 32;
        std::vector<char> stalled(num_warps, 0);
        uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t(x) << 20) ^ (uint64_t(y) << 40) ^ z;
        auto next = [&rng] {
          rng ^= rng << 13;
          rng ^= rng >> 7;
          rng ^= rng << 17;
          return rng;
        };
        for (;;) {
          bool any = false, any_stalled = false;
          const uint64_t before = g_progress;
          if (g_eager_copies) {
            for (int t = threads - 1; t > 0; --t) std::swap(order[t], order[next() % uint64_t(t + 1)]);
            for (int w = 0; w < num_warps; ++w) any_stalled |= (stalled[w] = char(next() & 1)) != 0;
          }
          for (int idx : order) {
            Fiber& f = fibers[idx];
            if (f.done) continue;
            any = true;
            if (stalled[idx / 32]) continue;
            g_self = &f;
            threadIdx = f.tid;
            swapcontext(&g_main_ctx, &f.ctx);
          }
          if (!any) break;
          if (g_progress == before && !any_stalled) {
            std::fprintf(stderr, "flash emulator: deadlock in block (%u, %u, %u): no thread reached a barrier\n", x,
                         y, z);
            std::abort();
          }
        }
      }
  g_self = nullptr;
  g_cta = nullptr;
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

inline void __syncthreads() { emu::g_cta->bar.arrive_and_wait(); }
inline void __syncwarp() { emu::warp_sync(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::WarpCtx* w = emu::g_self->warp;
  w->f[emu::g_self->lane] = v;
  emu::warp_sync();
  const float r = w->f[emu::g_self->lane ^ lane_mask];
  emu::warp_sync();
  return r;
}
inline float atomicAdd(float* p, float v) {  // fibers on one thread: no race
  const float old = *p;
  *p = old + v;
  return old;
}

inline void cp_async_16(void* dst, const void* src, bool pred) {
  const emu::PendingCopy c{dst, pred ? src : nullptr, pred ? 16 : 0, 16};
  if (emu::g_eager_copies) emu::perform({c});
  else emu::g_self->open.push_back(c);
}
inline void cp_async_4(void* dst, const void* src, bool pred) {
  const emu::PendingCopy c{dst, pred ? src : nullptr, pred ? 4 : 0, 4};
  if (emu::g_eager_copies) emu::perform({c});
  else emu::g_self->open.push_back(c);
}
inline void cp_async_commit() {
  emu::g_self->groups.push_back(std::move(emu::g_self->open));
  emu::g_self->open.clear();
}
template <int kPending>
inline void cp_async_wait() {
  auto& groups = emu::g_self->groups;
  while (static_cast<int>(groups.size()) > kPending) {
    emu::perform(groups.front());
    groups.pop_front();
  }
}

inline void ldmatrix_common(uint32_t (&r)[4], const void* row, bool trans) {
  emu::WarpCtx* w = emu::g_self->warp;
  const int l = emu::g_self->lane;
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
  emu::WarpCtx* w = emu::g_self->warp;
  const int l = emu::g_self->lane;
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
