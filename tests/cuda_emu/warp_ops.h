// Warp-level instructions of the CUDA emulation (fibers.h), computing what the PTX ISA specifies:
//   shuffles (xor and indexed) and __match_any_sync on any 4- or 8-byte value;
//   ldmatrix .x4 (.trans): lane l gives the row address of row l % 8 of matrix l / 8; lane l receives, per
//     matrix i, the elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) (.trans: (2 (l % 4), l / 4) and
//     (2 (l % 4) + 1, l / 4)) packed low / high;
//   mma.m16n8k16 (bf16 in, fp32 accumulate): a_r = A(l/4 + 8 (r%2), 2 (l%4) + 8 (r/2) + {0,1}),
//     b_r = B(2 (l%4) + 8 r + {0,1}, l/4), c_r = C(l/4 + 8 (r/2), 2 (l%4) + r%2);
//   cp.async (16 and 4 bytes, zero-fill when the predicate is false), commit_group, wait_group;
//   bf16 rounding to nearest even.
// Every warp-collective call needs all live lanes of the warp (full mask), as the kernels here use them.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fibers.h"

namespace smt::emu {

// The warp collectives, for the check that all live lanes of a warp are in the same one.
enum WarpOp : int { kOpShuffle = 1, kOpMatchAny, kOpLdmatrix, kOpLdmatrixTrans, kOpMma };

// Lane l enters collective `op`: after the first warp barrier every live lane must be in the same collective
// (on a GPU, lanes of a diverged warp meeting different shuffles or mma's exchange garbage or hang).
inline void enter_collective(WarpCtx* w, int l, int op) {
  w->op[l] = op;
  warp_sync();
  for (int j = 0; j < 32; ++j)
    if (!w->exited[j] && w->op[j] != op) {
      std::fprintf(stderr, "CUDA emulator: lanes %d and %d of a warp meet different warp collectives (%d, %d)\n", l,
                   j, op, w->op[j]);
      std::abort();
    }
}

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
inline uint32_t pack_bf16(float lo, float hi) { return uint32_t(f2bf_bits(lo)) | (uint32_t(f2bf_bits(hi)) << 16); }

// This lane's value published in its warp's word[] (zero-extended bits), then the collective `op` entered:
// afterwards every lane's word is readable until warp_sync().
template <typename T>
uint64_t publish(T v, int op) {
  static_assert(sizeof(T) <= 8, "warp collectives move 4- or 8-byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  g_self->warp->word[g_self->lane] = bits;
  enter_collective(g_self->warp, g_self->lane, op);
  return bits;
}

// Lane l receives the value of lane src_of(l).
template <typename T, typename SrcOf>
T exchange(T v, SrcOf src_of) {
  publish(v, kOpShuffle);
  const uint64_t got = g_self->warp->word[src_of(g_self->lane) & 31];
  warp_sync();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
template <typename T>
T shfl_xor(T v, int lane_mask) {
  return exchange(v, [lane_mask](int l) { return l ^ lane_mask; });
}
template <typename T>
T shfl_idx(T v, int src) {
  return exchange(v, [src](int) { return src; });
}
template <typename T>
T shfl_down(T v, int delta) {
  return exchange(v, [delta](int l) { return l + delta < 32 ? l + delta : l; });
}
// Bit j set when lane j holds the same value as this lane.
template <typename T>
unsigned match_any(T v) {
  const uint64_t bits = publish(v, kOpMatchAny);
  const WarpCtx* w = g_self->warp;
  unsigned same = 0;
  for (int j = 0; j < 32; ++j)
    if (!w->exited[j] && w->word[j] == bits) same |= 1u << j;  // lanes that exited never match
  warp_sync();
  return same;
}

inline void cp_async(void* dst, const void* src, bool pred, int size) {
  const PendingCopy c{dst, pred ? src : nullptr, pred ? size : 0, size};
  bool now = g_eager_copies;
  if (g_random_copies) {  // each copy lands at once or at its wait, by a fixed pseudo-random sequence
    static uint64_t rng = 0x2545F4914F6CDD1Dull;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    now = (rng >> 11) & 1;
  }
  if (now) perform({c});
  else g_self->open.push_back(c);
}
inline void cp_async_16(void* dst, const void* src, bool pred) { cp_async(dst, src, pred, 16); }
inline void cp_async_4(void* dst, const void* src, bool pred) { cp_async(dst, src, pred, 4); }
inline void cp_async_commit() {
  g_self->groups.push_back(std::move(g_self->open));
  g_self->open.clear();
}
template <int kPending>
inline void cp_async_wait() {
  auto& groups = g_self->groups;
  while (static_cast<int>(groups.size()) > kPending) {
    perform(groups.front());
    groups.pop_front();
  }
}

inline void ldmatrix_common(uint32_t (&r)[4], const void* row, bool trans) {
  WarpCtx* w = g_self->warp;
  const int l = g_self->lane;
  w->addr[l] = row;
  enter_collective(w, l, trans ? kOpLdmatrixTrans : kOpLdmatrix);
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
  warp_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_common(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix_common(r, row, true); }

inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpCtx* w = g_self->warp;
  const int l = g_self->lane;
  for (int r = 0; r < 4; ++r) w->a[l][r] = a[r];
  w->b[l][0] = b0;
  w->b[l][1] = b1;
  enter_collective(w, l, kOpMma);
  auto half = [](uint32_t reg, int k) { return bf_bits2f(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xFFFFu)); };
  auto A = [&](int row, int k) { return half(w->a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k); };
  auto B = [&](int k, int n) { return half(w->b[n * 4 + (k % 8) / 2][k / 8], k); };
  for (int r = 0; r < 4; ++r) {
    const int row = l / 4 + 8 * (r / 2), col = 2 * (l % 4) + r % 2;
    float sum = c[r];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    c[r] = sum;
  }
  warp_sync();
}

}  // namespace smt::emu

// The flash kernels' PTX wrappers (src/kernels/cuda/flash_attention_kernels.cuh leaves them to the emulator
// under SMT_FLASH_EMULATE; the including header supplies the bf16 type and bits_to_float).
namespace smt::gpu::flash_impl {
inline float fast_exp2(float x) { return std::exp2(x); }  // ex2.approx, here exact
using emu::cp_async_16;
using emu::cp_async_4;
using emu::cp_async_commit;
using emu::cp_async_wait;
using emu::ldmatrix_x4;
using emu::ldmatrix_x4_trans;
using emu::mma_bf16;
using emu::pack_bf16;
}  // namespace smt::gpu::flash_impl
