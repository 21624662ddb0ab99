// The execution model of the CUDA emulation: one fiber (ucontext, own stack) per CUDA thread of a block,
// blocks one after the other on the calling OS thread, fibers scheduled round robin. __syncthreads and
// __syncwarp are barriers at which a fiber yields until every live thread of its block / warp arrived (a
// thread that returned counts as arrived, as on sm_70 and later); a round in which no fiber moves is a
// deadlock: the emulator aborts with a message. Warp-level instructions (warp_ops.h) exchange operands
// through the per-warp WarpCtx between two warp barriers.
//
// Two schedules (g_shuffle_threads): in order, or a fresh pseudo-random thread order each round with whole
// warps stalling for random rounds, so warps drift apart between block barriers as on a GPU and a buffer
// overwritten while another warp still reads it (a missing __syncthreads) shows. cp.async copies are
// either deferred to cp.async.wait_group (shared memory starts filled with a poison pattern, so a read
// before its wait shows) or performed at once (g_eager_copies: a stage refilled while another warp still reads
// it shows), or each copy one way or the other by a fixed pseudo-random sequence (g_random_copies).
//
// Used by the flash attention CPU test (tests/unit/flash_emulator.h) and by the emulated CUDA build
// (tests/cuda_emu/cuda_emu.h, the cuda-emu preset).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace smt::emu {
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
}  // namespace smt::emu

// The CUDA built-in variables (set to the running fiber's values before it resumes).
inline smt::emu::Dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace smt::emu {

inline uint64_t g_progress = 0;        // arrivals at barriers and finished fibers: a round without any is a deadlock
inline bool g_eager_copies = false;    // cp.async lands at once (else at wait_group)
inline bool g_random_copies = false;   // each cp.async lands at once or at wait_group, pseudo-randomly
inline bool g_shuffle_threads = false;  // random thread order and warp stalls in each round
inline uint64_t g_block_serial = 0;     // counts the blocks run so far (static __shared__ is poisoned per block)

inline void yield();

// Invariant: count < expected between generations; a finished thread lowers `expected` (it counts as arrived).
struct Barrier {
  int expected = 0, count = 0;
  unsigned generation = 0;
  void arrive_and_wait() {
    ++g_progress;
    const unsigned g = generation;
    if (++count >= expected) {
      release();
      return;
    }
    while (generation == g) yield();
  }
  void leave() {  // a thread of this group returned
    --expected;
    if (count > 0 && count >= expected) release();
  }
  void release() {
    count = 0;
    ++generation;
  }
};

// Operand exchange of one warp: each lane writes its slot, a warp barrier, each lane reads, a warp barrier.
struct WarpCtx {
  Barrier bar{32};
  const void* addr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  uint64_t word[32];
  int op[32];          // which collective each lane is in (warp_ops.h checks that all live lanes agree)
  bool exited[32] = {};  // lanes that returned (or do not exist in a partial last warp)
  // A lane returned: its exchange slots hold poison from now on (a shuffle from it reads garbage, as on a GPU).
  void lane_exited(int l) {
    exited[l] = true;
    addr[l] = nullptr;
    word[l] = 0x7F7F7F7F7F7F7F7Full;
    for (uint32_t& r : a[l]) r = 0x7F7F7F7Fu;
    for (uint32_t& r : b[l]) r = 0x7F7F7F7Fu;
    op[l] = -1;
  }
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
    for (int w = 0; w < (threads + 31) / 32; ++w) {
      warps.push_back(std::make_unique<WarpCtx>());
      warps.back()->bar.expected = std::min(32, threads - 32 * w);
      for (int l = warps.back()->bar.expected; l < 32; ++l) warps.back()->lane_exited(l);
    }
    std::memset(storage.data(), 0x7F, storage.size() * 16);  // poison: bf16 0x7F7F ~ 3.4e38, float ~ 3.4e38
  }
  Barrier bar;
  std::vector<std::unique_ptr<WarpCtx>> warps;
  struct alignas(16) Chunk {
    unsigned char b[16];
  };
  std::vector<Chunk> storage;  // dynamic shared memory
};

// Context switch between fibers: on x86-64 (without AddressSanitizer, which must see stack switches) a
// switch saves the callee-saved registers on the old stack and swaps stack pointers (no system call);
// elsewhere ucontext's swapcontext (which also saves the signal mask: a system call per switch).
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define SMT_EMU_FAST_SWITCH 1
// switch_stacks(save, load): pushes rbp, rbx, r12-r15, stores rsp in *save, loads rsp = load, pops them, returns
// (into the code that called switch_stacks on that stack, or into a new fiber's entry function).
[[gnu::naked, gnu::noinline]] inline void switch_stacks(void** /*save*/, void* /*load*/) {
  asm volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "ret\n\t");
}
#endif

// One emulated CUDA thread.
struct Fiber {
  static constexpr size_t kStackBytes = 256 * 1024;
#if defined(SMT_EMU_FAST_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t ctx{};
#endif
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  bool done = false;
  Dim3 tid;
  int lane = 0;
  WarpCtx* warp = nullptr;
  std::deque<std::vector<PendingCopy>> groups;  // committed cp.async groups, oldest first
  std::vector<PendingCopy> open;                // the group being built
};

#if defined(SMT_EMU_FAST_SWITCH)
inline void* g_main_sp = nullptr;
#else
inline ucontext_t g_main_ctx;
#endif
inline Fiber* g_self = nullptr;  // the running fiber
inline CtaCtx* g_cta = nullptr;
inline std::function<void()> g_body;

#if defined(SMT_EMU_FAST_SWITCH)
inline void yield() { switch_stacks(&g_self->sp, g_main_sp); }
inline void resume(Fiber& f) { switch_stacks(&g_main_sp, f.sp); }
#else
inline void yield() { swapcontext(&g_self->ctx, &g_main_ctx); }
inline void resume(Fiber& f) { swapcontext(&g_main_ctx, &f.ctx); }
#endif
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
  g_self->warp->lane_exited(g_self->lane);
  g_self->warp->bar.leave();
  g_cta->bar.leave();
  ++g_progress;
#if defined(SMT_EMU_FAST_SWITCH)
  yield();  // never resumed
  std::abort();
#endif
}  // (ucontext) returns to g_main_ctx through uc_link

// Prepares f to run fiber_entry from the top of its stack at its next resume.
inline void start_fiber(Fiber& f) {
#if defined(SMT_EMU_FAST_SWITCH)
  // From the top: a zero fake return address for fiber_entry (so that it starts with rsp % 16 == 8, as after
  // a call), the address switch_stacks returns to, and six zero registers.
  auto top = reinterpret_cast<uintptr_t>(f.stack.get() + Fiber::kStackBytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<void**>(top);
  *--slot = nullptr;
  *--slot = reinterpret_cast<void*>(&fiber_entry);
  for (int r = 0; r < 6; ++r) *--slot = nullptr;
  f.sp = slot;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.get();
  f.ctx.uc_stack.ss_size = Fiber::kStackBytes;
  f.ctx.uc_link = &g_main_ctx;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

// Fibers are kept between launches (their stacks are the expensive part).
inline std::vector<std::unique_ptr<Fiber>>& fiber_pool(int threads) {
  static std::vector<std::unique_ptr<Fiber>> pool;
  while (static_cast<int>(pool.size()) < threads) pool.push_back(std::make_unique<Fiber>());
  return pool;
}

// Runs body() as every thread of every block of the grid, block after block, `threads` threads each
// (one-dimensional blocks), with smem_bytes of dynamic shared memory per block.
template <typename Body>
void run_grid(Body&& body, Dim3 grid, int threads, size_t smem_bytes) {
  auto& fibers = fiber_pool(threads);
  g_body = std::forward<Body>(body);
  gridDim = grid;
  blockDim = Dim3{unsigned(threads), 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        CtaCtx cta(threads, smem_bytes);
        g_cta = &cta;
        ++g_block_serial;
        blockIdx = Dim3{x, y, z};
        for (int t = 0; t < threads; ++t) {
          Fiber& f = *fibers[t];
          f.done = false;
          f.tid = Dim3{unsigned(t), 0, 0};
          f.lane = t % 32;
          f.warp = cta.warps[t / 32].get();
          f.groups.clear();
          f.open.clear();
          start_fiber(f);
        }
        std::vector<int> order(threads);
        for (int t = 0; t < threads; ++t) order[t] = t;
        const int num_warps = (threads + 31) / 32;
        std::vector<char> stalled(num_warps, 0);
        uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t(x) << 20) ^ (uint64_t(y) << 40) ^ z;
        auto next = [&rng] {
          rng ^= rng << 13;
          rng ^= rng >> 7;
          rng ^= rng << 17;
          return rng;
        };
        bool calm_round = false;  // after a round without progress in which warps stalled: one without stalls
        for (;;) {
          bool any = false, any_stalled = false;
          const uint64_t before = g_progress;
          if (g_shuffle_threads) {
            for (int t = threads - 1; t > 0; --t) std::swap(order[t], order[next() % uint64_t(t + 1)]);
            for (int w = 0; w < num_warps; ++w) any_stalled |= (stalled[w] = char(!calm_round && (next() & 1))) != 0;
          }
          for (int idx : order) {
            Fiber& f = *fibers[idx];
            if (f.done) continue;
            any = true;
            if (stalled[idx / 32]) continue;
            g_self = &f;
            threadIdx = f.tid;
            resume(f);
          }
          if (!any) break;
          if (g_progress != before) {
            calm_round = false;
          } else if (any_stalled) {
            calm_round = true;
          } else {
            std::fprintf(stderr, "CUDA emulator: deadlock in block (%u, %u, %u): no thread reached a barrier\n", x, y,
                         z);
            std::abort();
          }
        }
      }
  g_self = nullptr;
  g_cta = nullptr;
}

// The flash test's form: kernel(args) as every thread.
template <typename Kernel, typename Args>
void launch(Kernel kernel, Dim3 grid, int threads, size_t smem_bytes, const Args& args) {
  run_grid([&] { kernel(args); }, grid, threads, smem_bytes);
}

}  // namespace smt::emu
