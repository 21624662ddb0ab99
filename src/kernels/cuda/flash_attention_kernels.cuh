// The device code of the flash attention kernels (included by flash_attention.cu; see its header comment for
// the tiling, the shared-memory layout and the invariants). Kept apart from the host code so that a CPU test
// (tests/unit/test_flash_emulated.cpp) can compile these very kernels with SMT_FLASH_EMULATE defined, against an
// emulation of the warp-level instructions (ldmatrix, mma.sync, shuffles, barriers) that follows the PTX ISA.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/flash_tiles.h"

#if !defined(SMT_FLASH_EMULATE)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define SMT_FLASH_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace smt::gpu::flash_impl {

#if !defined(SMT_FLASH_EMULATE)
using bf16 = __nv_bfloat16;
// ---- PTX wrappers ----

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy global -> shared; pred false: 16 zero bytes, nothing read from src.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* src, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
// 4-byte async copy global -> shared; pred false: 4 zero bytes.
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* src, bool pred) {
  const int src_bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8; register i holds matrix i,
// lane l gets (row l / 4, columns 2 (l % 4), 2 (l % 4) + 1) -- with .trans, (rows 2 (l % 4) and +1, column l / 4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = smem_u32(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = smem_u32(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// c[16x8] += a[16x16] b[16x8]. Fragments (g = lane / 4, t = lane % 4):
//   a: {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}  b: {(k 2t..2t+1, n g), (k 2t+8.., n g)}
//   c: {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// Two floats -> bf16x2 (round to nearest even), `lo` in the low half (the smaller column index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}
__device__ __forceinline__ float bits_to_float(uint32_t u) { return __uint_as_float(u); }

#endif  // !SMT_FLASH_EMULATE

using flash::kBwdM;
using flash::kTileKeys;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using flash::entry_tile_relation;
using flash::key_word;
using flash::MaskArgs;
using flash::pair_allowed;
using flash::seek_key_tile;
using flash::seek_query_tile;

// ---- tile loads ----

// Rows [row0, row0 + R) x hd of a [.., N, H, hd] tensor (row stride rs elements) into s [R][HD + 8] with
// cp.async; rows >= N are zero-filled.
template <int HD, int R, int THREADS>
__device__ __forceinline__ void load_rows_async(bf16* s, const bf16* g, int64_t rs, int row0, int N) {
  constexpr int kChunksPerRow = HD / 8;
  constexpr int kTotal = R * kChunksPerRow;
  static_assert(kTotal % THREADS == 0, "tile chunks must divide evenly over the threads");
#pragma unroll
  for (int i = threadIdx.x; i < kTotal; i += THREADS) {
    const int r = i / kChunksPerRow, c = i % kChunksPerRow;
    const int pos = row0 + r;
    const bool ok = pos < N;
    const bf16* src = g + int64_t(ok ? pos : 0) * rs + c * 8;
    cp_async_16((s + r * (HD + 8) + c * 8), src, ok);
  }
}

// acc [NT_OUT][4] = A B^T for one warp (overwritten): A the warp's 16 x (16 KS) bf16 rows at sA and B an
// (8 NT_OUT) x (16 KS) bf16 tile at sB, both in shared memory with row stride LD and read with ldmatrix.
// S^T = K Q^T and dP^T = V dO^T of the dk/dv kernel are this product.
template <int KS, int NT_OUT, int LD>
__device__ __forceinline__ void mma_smem_times_smem_t(float (&acc)[NT_OUT][4], const bf16* sA, const bf16* sB, int mi,
                                                      int r8) {
#pragma unroll
  for (int j = 0; j < NT_OUT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, (sA + ((mi & 1) * 8 + r8) * LD + kk * 16 + (mi >> 1) * 8));
#pragma unroll
    for (int np = 0; np < NT_OUT / 2; ++np) {
      uint32_t bfr[4];
      ldmatrix_x4(bfr, (sB + (np * 16 + (mi >> 1) * 8 + r8) * LD + kk * 16 + (mi & 1) * 8));
      mma_bf16(acc[2 * np], af, bfr[0], bfr[1]);
      mma_bf16(acc[2 * np + 1], af, bfr[2], bfr[3]);
    }
  }
}

// acc [NT_OUT][4] += S M for one warp: S is a 16 x (16 KS) tile held in mma accumulator layout (s[2 KS][4],
// rounded to bf16 as the A operand), M the (16 KS) x (8 NT_OUT) bf16 tile at sM in shared memory (row
// stride LD elements), read with transposed ldmatrix as the B operand. O += P V, dV += P^T dO,
// dK += dS^T Q and dQ += dS K are all this product.
template <int KS, int NT_OUT, int LD>
__device__ __forceinline__ void mma_acc_times_smem(float (&acc)[NT_OUT][4], const float (&s)[2 * KS][4], const bf16* sM,
                                                   int mi, int r8) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t a[4];
    a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
    a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
    a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dd = 0; dd < NT_OUT / 2; ++dd) {
      uint32_t bfr[4];
      ldmatrix_x4_trans(bfr, (sM + (kk * 16 + (mi & 1) * 8 + r8) * LD + dd * 16 + (mi >> 1) * 8));
      mma_bf16(acc[2 * dd], a, bfr[0], bfr[1]);
      mma_bf16(acc[2 * dd + 1], a, bfr[2], bfr[3]);
    }
  }
}

// The element mask of a score tile held query-major in mma accumulators (this thread: rows qrow_a and
// qrow_a + 8, columns k0 + j*8 + 2t + {0,1} of NT_N 8-key column groups; keys [k0, k_hi] of the entry e,
// queries [q0, q_hi]): forbidden pairs (rule, causality, window, key padding, keys past N) become -inf.
// Nothing is done when the sub-tile is full (relation 2) and its 64 keys are all valid. Used by the
// forward and by the deterministic dq pass, which see the same tiles.
template <int NT_N>
__device__ __forceinline__ void mask_query_major_scores(float (&sc)[NT_N][4], const MaskArgs& m, int e, int b, int q0,
                                                        int q_hi, int k0, int k_hi, int qrow_a, int t) {
  const bool win = flash::is_window(m, e);
  const int rel = entry_tile_relation(m, e, q0, q_hi, k0, k_hi);
  const uint64_t bits = key_word(m, b, k0);
  if (rel == 2 && bits == ~0ull) return;
#pragma unroll
  for (int j = 0; j < NT_N; ++j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int col = j * 8 + 2 * t + (x & 1);
      const int qpos = qrow_a + (x >> 1) * 8;
      const bool ok = ((bits >> col) & 1ull) != 0 &&
                      (rel == 2 || pair_allowed(qpos, k0 + col, m.causal != 0, win, m.window));
      if (!ok) sc[j][x] = -INFINITY;
    }
}

struct FlashArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* dout;
  bf16* out;        // forward
  float* lse;       // forward output
  const float* lse_in;
  const float* Dvec;  // [B, H, N]
  bf16* dq;
  bf16* dk;
  bf16* dv;
  float* dq_acc;
  float* dk_acc;
  float* dv_acc;
  float* dq_atomic;  // atomic mode target (fp32, [B, N, H, hd])
  MaskArgs m;
  int H;
  int tiles_per_block;  // CTA tiles per mask block (grid.x = num_blocks * tiles_per_block)
  float scale, scale_log2;
};

// =============================================================================================================
// Forward
// =============================================================================================================
// Head dim 64: at least 16 warps per SM (<= 128 registers per thread); head dim 128 needs more registers.
template <int HD, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, HD == 64 ? 16 / WARPS : 1) flash_fwd_kernel(FlashArgs a) {
  constexpr int BM = 16 * WARPS, BN = kTileKeys, LD = HD + 8, THREADS = WARPS * 32;
  constexpr int KS_HD = HD / 16, NT_HD = HD / 8, NT_N = BN / 8;
  SMT_FLASH_SMEM(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + BM * LD;
  bf16* sV = sK + 2 * BN * LD;

  const MaskArgs& m = a.m;
  const int tile = gridDim.x - 1 - blockIdx.x;  // late query blocks (most keys when causal) first
  const int qb = tile / a.tiles_per_block;
  const int q0 = qb * m.bs + (tile % a.tiles_per_block) * BM;
  const int N = m.N;
  if (q0 >= N) return;  // CTA-uniform
  const int q_hi = min(q0 + BM, N) - 1;
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int64_t rs = int64_t(a.H) * HD;
  const int64_t head0 = int64_t(b) * N * rs + int64_t(h) * HD;  // element (b, 0, h, 0)
  const bf16* qg = a.q + head0;
  const bf16* kg = a.k + head0;
  const bf16* vg = a.v + head0;

  load_rows_async<HD, BM, THREADS>(sQ, qg, rs, q0, N);
  cp_async_commit();
  const int e_end = m.q_row_ptr[qb + 1];
  int e = m.q_row_ptr[qb], s = 0;
  bool have = seek_key_tile(m, e_end, q0, q_hi, e, s);
  if (have) {
    const int k0 = m.q_col_idx[e] * m.bs + s * BN;
    load_rows_async<HD, BN, THREADS>(sK, kg, rs, k0, N);
    load_rows_async<HD, BN, THREADS>(sV, vg, rs, k0, N);
  }
  cp_async_commit();

  float o[NT_HD][4];
#pragma unroll
  for (int j = 0; j < NT_HD; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // row_sum: this thread's columns only
  uint32_t qf[KS_HD][4];
  const int qrow_a = q0 + warp * 16 + g;  // this thread's rows: qrow_a and qrow_a + 8
  const float sl2 = a.scale_log2;
  int stage = 0;
  bool q_in_regs = false;

  while (have) {
    int ne = e, ns = s + 1;
    const bool have_next = seek_key_tile(m, e_end, q0, q_hi, ne, ns);
    if (have_next) {
      const int nk0 = m.q_col_idx[ne] * m.bs + ns * BN;
      load_rows_async<HD, BN, THREADS>(sK + (stage ^ 1) * BN * LD, kg, rs, nk0, N);
      load_rows_async<HD, BN, THREADS>(sV + (stage ^ 1) * BN * LD, vg, rs, nk0, N);
    }
    cp_async_commit();
    cp_async_wait<1>();  // Q and the current K/V stage have landed (this thread's copies)
    __syncthreads();     // ... and every thread's

    if (!q_in_regs) {
#pragma unroll
      for (int kk = 0; kk < KS_HD; ++kk)
        ldmatrix_x4(qf[kk], (sQ + (warp * 16 + (mi & 1) * 8 + r8) * LD + kk * 16 + (mi >> 1) * 8));
      q_in_regs = true;
    }
    const bf16* sKt = sK + stage * BN * LD;
    const bf16* sVt = sV + stage * BN * LD;
    const int k0 = m.q_col_idx[e] * m.bs + s * BN;

    // S = Q K^T (raw dot products; the scale is folded into the exponent)
    float sc[NT_N][4];
#pragma unroll
    for (int j = 0; j < NT_N; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS_HD; ++kk) {
#pragma unroll
      for (int np = 0; np < NT_N / 2; ++np) {
        uint32_t bfr[4];
        ldmatrix_x4(bfr, (sKt + (np * 16 + (mi >> 1) * 8 + r8) * LD + kk * 16 + (mi & 1) * 8));
        mma_bf16(sc[2 * np], qf[kk], bfr[0], bfr[1]);
        mma_bf16(sc[2 * np + 1], qf[kk], bfr[2], bfr[3]);
      }
    }

    // element mask: only partial sub-tiles and sub-tiles with padding / keys past N
    mask_query_major_scores<NT_N>(sc, m, e, b, q0, q_hi, k0, min(k0 + BN, N) - 1, qrow_a, t);

    // online softmax (rows g and g + 8 of the warp; a row's 64 columns live in the 4 lanes of a quad)
    float base[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < NT_N; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * i], sc[j][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(row_max[i], mx);
      const float alpha = m_new == -INFINITY ? 1.0f : fast_exp2((row_max[i] - m_new) * sl2);
      base[i] = m_new == -INFINITY ? 0.0f : m_new * sl2;
      row_max[i] = m_new;
      row_sum[i] *= alpha;
#pragma unroll
      for (int j = 0; j < NT_HD; ++j) {
        o[j][2 * i] *= alpha;
        o[j][2 * i + 1] *= alpha;
      }
    }
#pragma unroll
    for (int j = 0; j < NT_N; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float p = fast_exp2(fmaf(sc[j][x], sl2, -base[x >> 1]));
        sc[j][x] = p;
        row_sum[x >> 1] += p;
      }

    // O += P V (P rounded to bf16 as the A operand)
    mma_acc_times_smem<BN / 16, NT_HD, LD>(o, sc, sVt, mi, r8);
    __syncthreads();  // the stage just read may be refilled by the next iteration
    e = ne;
    s = ns;
    have = have_next;
    stage ^= 1;
  }

  // epilogue: out = O / l (0 for rows without keys), lse = m * scale + ln(l)
  cp_async_wait<0>();
  __syncthreads();  // sQ free (also when no tile was visited and Q was never waited for)
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float l = row_sum[i];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[i] = l > 0.0f ? 1.0f / l : 0.0f;
    const int qpos = qrow_a + i * 8;
    if (t == 0 && qpos < N)
      a.lse[(int64_t(b) * a.H + h) * N + qpos] = l > 0.0f ? (row_max[i] * sl2 + __log2f(l)) * kLn2 : -INFINITY;
  }
  bf16* sO = sQ + warp * 16 * LD;  // this warp's own 16 rows
#pragma unroll
  for (int j = 0; j < NT_HD; ++j) {
    const int col = j * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(sO + g * LD + col) = pack_bf16(o[j][0] * inv[0], o[j][1] * inv[0]);
    *reinterpret_cast<uint32_t*>(sO + (g + 8) * LD + col) = pack_bf16(o[j][2] * inv[1], o[j][3] * inv[1]);
  }
  __syncwarp();
  bf16* og = a.out + head0;
  constexpr int kChunksPerRow = HD / 8;
#pragma unroll
  for (int i = lane; i < 16 * kChunksPerRow; i += 32) {
    const int r = i / kChunksPerRow, c = i % kChunksPerRow;
    const int qpos = q0 + warp * 16 + r;
    if (qpos < N)
      *reinterpret_cast<uint4*>(og + int64_t(qpos) * rs + c * 8) =
          *reinterpret_cast<const uint4*>(sO + r * LD + c * 8);
  }
}

// =============================================================================================================
// Backward
// =============================================================================================================

// D[b, h, n] = sum_c dout * out (fp32), one group of hd / 8 lanes per row (16-byte loads).
template <int HD>
__global__ void flash_bwd_dot_kernel(float* __restrict__ D, const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                     int64_t num_rows, int N, int H) {
  constexpr int G = HD / 8;  // lanes per row (8 or 16)
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t row = tid / G;
  const int c = static_cast<int>(tid % G);
  float sum = 0.0f;
  if (row < num_rows) {
    // 8 bf16 of each operand in one 16-byte load; a bf16 is the high half of a float's bits
    const uint4 x = *reinterpret_cast<const uint4*>(dout + row * HD + c * 8);
    const uint4 y = *reinterpret_cast<const uint4*>(out + row * HD + c * 8);
    const uint32_t xw[4] = {x.x, x.y, x.z, x.w}, yw[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum = fmaf(bits_to_float(xw[i] << 16), bits_to_float(yw[i] << 16), sum);
      sum = fmaf(bits_to_float(xw[i] & 0xFFFF0000u), bits_to_float(yw[i] & 0xFFFF0000u), sum);
    }
  }
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);  // groups are lane-aligned
  if (row < num_rows && c == 0) {
    const int64_t h = row % H, n = (row / H) % N, b = row / (int64_t(H) * N);
    D[(b * H + h) * N + n] = sum;
  }
}

// Writes an fp32 result row pair held in MMA accumulator layout: acc (+= scale * x) and bf16 (= scale * x).
template <int NT>
__device__ __forceinline__ void store_grad_rows(const float (&x)[NT][4], float scale, int row_a, int N, int col0,
                                                int t, int64_t rs, int64_t head0, float* acc, bf16* out) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row_a + 8 * i;
    if (row >= N) continue;
    const int64_t off = head0 + int64_t(row) * rs;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int col = col0 + j * 8 + 2 * t;
      const float v0 = scale * x[j][2 * i], v1 = scale * x[j][2 * i + 1];
      if (acc != nullptr) {
        float2* p = reinterpret_cast<float2*>(acc + off + col);
        float2 old = *p;
        old.x += v0;
        old.y += v1;
        *p = old;
      }
      if (out != nullptr) *reinterpret_cast<uint32_t*>(out + off + col) = pack_bf16(v0, v1);
    }
  }
}

// dk, dv per key tile of 16 * WARPS keys over the transposed lists; with ATOMIC_DQ also dq += scale * dS K.
template <int HD, int WARPS, bool ATOMIC_DQ>
__global__ void __launch_bounds__(WARPS * 32) flash_bwd_dkv_kernel(FlashArgs a) {
  constexpr int BN = 16 * WARPS, BM = kBwdM, LD = HD + 8, LDS = BM + 8, THREADS = WARPS * 32;
  constexpr int KS_HD = HD / 16, NT_HD = HD / 8, NT_M = BM / 8;
  SMT_FLASH_SMEM(smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);
  bf16* sV = sK + BN * LD;
  bf16* sQ = sV + BN * LD;
  bf16* sdO = sQ + 2 * BM * LD;
  bf16* sdS = sdO + 2 * BM * LD;  // [BN][LDS], only with ATOMIC_DQ
  float* sLse = reinterpret_cast<float*>(sdS + (ATOMIC_DQ ? BN * LDS : 0));
  float* sD = sLse + 2 * BM;

  const MaskArgs& m = a.m;
  const int tile = blockIdx.x;
  const int kb = tile / a.tiles_per_block;
  const int k0 = kb * m.bs + (tile % a.tiles_per_block) * BN;
  const int N = m.N;
  if (k0 >= N) return;  // CTA-uniform
  const int k_hi = min(k0 + BN, N) - 1;
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int64_t rs = int64_t(a.H) * HD;
  const int64_t head0 = int64_t(b) * N * rs + int64_t(h) * HD;
  const int64_t lse0 = (int64_t(b) * a.H + h) * N;
  const float sl2 = a.scale_log2;

  // key validity: per thread for its two key rows, and whether the whole tile is valid
  bool keys_all_valid = true;
#pragma unroll
  for (int w = 0; w < BN / 64; ++w)
    keys_all_valid = keys_all_valid && (k0 + 64 * w < N ? key_word(m, b, k0 + 64 * w) == ~0ull : false);
  const int krow_a = k0 + warp * 16 + g;  // this thread's keys: krow_a and krow_a + 8
  bool key_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int kpos = krow_a + 8 * i;
    key_ok[i] = kpos < N && ((key_word(m, b, kpos & ~63) >> (kpos & 63)) & 1ull) != 0;
  }

  load_rows_async<HD, BN, THREADS>(sK, a.k + head0, rs, k0, N);
  load_rows_async<HD, BN, THREADS>(sV, a.v + head0, rs, k0, N);
  cp_async_commit();

  auto load_stage = [&](int st, int qrow0) {
    load_rows_async<HD, BM, THREADS>(sQ + st * BM * LD, a.q + head0, rs, qrow0, N);
    load_rows_async<HD, BM, THREADS>(sdO + st * BM * LD, a.dout + head0, rs, qrow0, N);
    for (int i = threadIdx.x; i < BM; i += THREADS) {
      const int qpos = qrow0 + i;
      const bool ok = qpos < N;
      cp_async_4((sLse + st * BM + i), a.lse_in + lse0 + (ok ? qpos : 0), ok);
      cp_async_4((sD + st * BM + i), a.Dvec + lse0 + (ok ? qpos : 0), ok);
    }
  };
  auto q_start = [&](int x, int s) { return m.kv_row_idx[x] * m.bs + s * BM; };

  const int x_end = m.kv_col_ptr[kb + 1];
  int x = m.kv_col_ptr[kb], s = 0;
  bool have = seek_query_tile(m, x_end, k0, k_hi, x, s);
  if (have) load_stage(0, q_start(x, s));
  cp_async_commit();

  float dk[NT_HD][4], dv[NT_HD][4];
#pragma unroll
  for (int j = 0; j < NT_HD; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk[j][c] = dv[j][c] = 0.0f;
  int stage = 0;

  while (have) {
    int nx = x, ns = s + 1;
    const bool have_next = seek_query_tile(m, x_end, k0, k_hi, nx, ns);
    if (have_next) load_stage(stage ^ 1, q_start(nx, ns));
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const bf16* sQt = sQ + stage * BM * LD;
    const bf16* sdOt = sdO + stage * BM * LD;
    const float* sLt = sLse + stage * BM;
    const float* sDt = sD + stage * BM;
    const int q0 = q_start(x, s);

    // S^T = K Q^T for the warp's 16 keys x BM queries
    float sc[NT_M][4];
    mma_smem_times_smem_t<KS_HD, NT_M, LD>(sc, sK + warp * 16 * LD, sQt, mi, r8);
    // element mask (partial sub-tiles, invalid keys)
    {
      const int e = m.kv_entry[x];
      const bool win = flash::is_window(m, e);
      const int rel = entry_tile_relation(m, e, q0, min(q0 + BM, N) - 1, k0, k_hi);
      if (rel != 2 || !keys_all_valid) {
#pragma unroll
        for (int j = 0; j < NT_M; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int qpos = q0 + j * 8 + 2 * t + (c & 1);
            const int kpos = krow_a + (c >> 1) * 8;
            const bool ok =
                key_ok[c >> 1] && (rel == 2 || pair_allowed(qpos, kpos, m.causal != 0, win, m.window));
            if (!ok) sc[j][c] = -INFINITY;
          }
      }
    }
    // P^T = exp(scale s - lse): rows past N or without keys (lse = -inf) give exactly 0
#pragma unroll
    for (int j = 0; j < NT_M; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = j * 8 + 2 * t + (c & 1);
        const float l = sLt[col];
        const float lse2 = (q0 + col < N && l != -INFINITY) ? l * kLog2e : INFINITY;
        sc[j][c] = fast_exp2(fmaf(sc[j][c], sl2, -lse2));
      }
    // dP^T = V dO^T
    float dp[NT_M][4];
    mma_smem_times_smem_t<KS_HD, NT_M, LD>(dp, sV + warp * 16 * LD, sdOt, mi, r8);
    // dV += P^T dO
    mma_acc_times_smem<BM / 16, NT_HD, LD>(dv, sc, sdOt, mi, r8);
    // dS^T = P^T (dP^T - D)
#pragma unroll
    for (int j = 0; j < NT_M; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) dp[j][c] = sc[j][c] * (dp[j][c] - sDt[j * 8 + 2 * t + (c & 1)]);
    // dK += dS^T Q (scaled at the end)
    mma_acc_times_smem<BM / 16, NT_HD, LD>(dk, dp, sQt, mi, r8);
    if constexpr (ATOMIC_DQ) {
      // dS^T (bf16) to shared memory, then dQ[BM x HD] += dS K split over the warps:
      // RG = BM / 16 row groups x DS = WARPS / RG column slices of HD / DS.
#pragma unroll
      for (int j = 0; j < NT_M; ++j) {
        const int col = j * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * LDS + col) = pack_bf16(dp[j][0], dp[j][1]);
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * LDS + col) = pack_bf16(dp[j][2], dp[j][3]);
      }
      __syncthreads();
      constexpr int RG = BM / 16, DS = WARPS / RG, DW = HD / DS, NT_DW = DW / 8;
      static_assert(WARPS % RG == 0 && DW % 16 == 0, "dq warp split");
      const int rg = warp % RG, d0 = (warp / RG) * DW;
      float dq[NT_DW][4];
#pragma unroll
      for (int j = 0; j < NT_DW; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t da[4];  // A = dS [queries x keys] read transposed from sdS [keys][queries]
        ldmatrix_x4_trans(da, (sdS + (kk * 16 + (mi >> 1) * 8 + r8) * LDS + rg * 16 + (mi & 1) * 8));
#pragma unroll
        for (int dd = 0; dd < NT_DW / 2; ++dd) {
          uint32_t bfr[4];
          ldmatrix_x4_trans(bfr, (sK + (kk * 16 + (mi & 1) * 8 + r8) * LD + d0 + dd * 16 + (mi >> 1) * 8));
          mma_bf16(dq[2 * dd], da, bfr[0], bfr[1]);
          mma_bf16(dq[2 * dd + 1], da, bfr[2], bfr[3]);
        }
      }
      const int qrow_a = q0 + rg * 16 + g;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int qpos = qrow_a + 8 * i;
        if (qpos >= N) continue;
        float* dst = a.dq_atomic + head0 + int64_t(qpos) * rs + d0;
#pragma unroll
        for (int j = 0; j < NT_DW; ++j) {
          atomicAdd(dst + j * 8 + 2 * t, a.scale * dq[j][2 * i]);
          atomicAdd(dst + j * 8 + 2 * t + 1, a.scale * dq[j][2 * i + 1]);
        }
      }
    }
    __syncthreads();  // stage (and sdS) may be overwritten by the next iteration
    x = nx;
    s = ns;
    have = have_next;
    stage ^= 1;
  }
  cp_async_wait<0>();  // nothing may be in flight when the CTA exits (e.g. K/V when no tile was visited)

  // dk = scale * sum dS^T Q, dv = sum P^T dO for this thread's two key rows
  store_grad_rows<NT_HD>(dk, a.scale, krow_a, N, 0, t, rs, head0, a.dk_acc, a.dk);
  store_grad_rows<NT_HD>(dv, 1.0f, krow_a, N, 0, t, rs, head0, a.dv_acc, a.dv);
}

// Deterministic dq: per query tile (as the forward), dq = scale * sum over the key sub-tiles of dS K.
template <int HD, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) flash_bwd_dq_kernel(FlashArgs a) {
  constexpr int BM = 16 * WARPS, BN = kTileKeys, LD = HD + 8, THREADS = WARPS * 32;
  constexpr int KS_HD = HD / 16, NT_HD = HD / 8, NT_N = BN / 8;
  SMT_FLASH_SMEM(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + BM * LD;
  bf16* sK = sdO + BM * LD;
  bf16* sV = sK + 2 * BN * LD;

  const MaskArgs& m = a.m;
  const int tile = gridDim.x - 1 - blockIdx.x;
  const int qb = tile / a.tiles_per_block;
  const int q0 = qb * m.bs + (tile % a.tiles_per_block) * BM;
  const int N = m.N;
  if (q0 >= N) return;
  const int q_hi = min(q0 + BM, N) - 1;
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int64_t rs = int64_t(a.H) * HD;
  const int64_t head0 = int64_t(b) * N * rs + int64_t(h) * HD;
  const int64_t lse0 = (int64_t(b) * a.H + h) * N;
  const bf16* kg = a.k + head0;
  const bf16* vg = a.v + head0;
  const float sl2 = a.scale_log2;

  load_rows_async<HD, BM, THREADS>(sQ, a.q + head0, rs, q0, N);
  load_rows_async<HD, BM, THREADS>(sdO, a.dout + head0, rs, q0, N);
  cp_async_commit();
  const int e_end = m.q_row_ptr[qb + 1];
  int e = m.q_row_ptr[qb], s = 0;
  bool have = seek_key_tile(m, e_end, q0, q_hi, e, s);
  if (have) {
    const int k0 = m.q_col_idx[e] * m.bs + s * BN;
    load_rows_async<HD, BN, THREADS>(sK, kg, rs, k0, N);
    load_rows_async<HD, BN, THREADS>(sV, vg, rs, k0, N);
  }
  cp_async_commit();

  const int qrow_a = q0 + warp * 16 + g;
  float lse2[2], Drow[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int qpos = qrow_a + 8 * i;
    const float l = qpos < N ? a.lse_in[lse0 + qpos] : -INFINITY;
    lse2[i] = l == -INFINITY ? INFINITY : l * kLog2e;
    Drow[i] = qpos < N ? a.Dvec[lse0 + qpos] : 0.0f;
  }
  float dq[NT_HD][4];
#pragma unroll
  for (int j = 0; j < NT_HD; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
  int stage = 0;

  while (have) {
    int ne = e, ns = s + 1;
    const bool have_next = seek_key_tile(m, e_end, q0, q_hi, ne, ns);
    if (have_next) {
      const int nk0 = m.q_col_idx[ne] * m.bs + ns * BN;
      load_rows_async<HD, BN, THREADS>(sK + (stage ^ 1) * BN * LD, kg, rs, nk0, N);
      load_rows_async<HD, BN, THREADS>(sV + (stage ^ 1) * BN * LD, vg, rs, nk0, N);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const bf16* sKt = sK + stage * BN * LD;
    const bf16* sVt = sV + stage * BN * LD;
    const int k0 = m.q_col_idx[e] * m.bs + s * BN;

    // S = Q K^T and dP = dO V^T
    float sc[NT_N][4], dp[NT_N][4];
#pragma unroll
    for (int j = 0; j < NT_N; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) sc[j][c] = dp[j][c] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS_HD; ++kk) {
      uint32_t qf[4], df[4];
      ldmatrix_x4(qf, (sQ + (warp * 16 + (mi & 1) * 8 + r8) * LD + kk * 16 + (mi >> 1) * 8));
      ldmatrix_x4(df, (sdO + (warp * 16 + (mi & 1) * 8 + r8) * LD + kk * 16 + (mi >> 1) * 8));
#pragma unroll
      for (int np = 0; np < NT_N / 2; ++np) {
        uint32_t kf[4], vf[4];
        ldmatrix_x4(kf, (sKt + (np * 16 + (mi >> 1) * 8 + r8) * LD + kk * 16 + (mi & 1) * 8));
        ldmatrix_x4(vf, (sVt + (np * 16 + (mi >> 1) * 8 + r8) * LD + kk * 16 + (mi & 1) * 8));
        mma_bf16(sc[2 * np], qf, kf[0], kf[1]);
        mma_bf16(sc[2 * np + 1], qf, kf[2], kf[3]);
        mma_bf16(dp[2 * np], df, vf[0], vf[1]);
        mma_bf16(dp[2 * np + 1], df, vf[2], vf[3]);
      }
    }
    mask_query_major_scores<NT_N>(sc, m, e, b, q0, q_hi, k0, min(k0 + BN, N) - 1, qrow_a, t);
    // dS = P (dP - D), P = exp(scale s - lse)
#pragma unroll
    for (int j = 0; j < NT_N; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float p = fast_exp2(fmaf(sc[j][c], sl2, -lse2[c >> 1]));
        dp[j][c] = p * (dp[j][c] - Drow[c >> 1]);
      }
    // dQ += dS K
    mma_acc_times_smem<BN / 16, NT_HD, LD>(dq, dp, sKt, mi, r8);
    __syncthreads();
    e = ne;
    s = ns;
    have = have_next;
    stage ^= 1;
  }
  cp_async_wait<0>();
  store_grad_rows<NT_HD>(dq, a.scale, qrow_a, N, 0, t, rs, head0, a.dq_acc, a.dq);
}

template <int HD, int WARPS>
constexpr size_t fwd_smem_bytes() {
  return size_t(16 * WARPS + 4 * kTileKeys) * (HD + 8) * sizeof(bf16);
}
template <int HD, int WARPS>
constexpr size_t dq_smem_bytes() {
  return size_t(2 * 16 * WARPS + 4 * kTileKeys) * (HD + 8) * sizeof(bf16);
}
template <int HD, int WARPS, bool ATOMIC_DQ>
constexpr size_t dkv_smem_bytes() {
  return size_t(2 * 16 * WARPS + 4 * kBwdM) * (HD + 8) * sizeof(bf16) +
         (ATOMIC_DQ ? size_t(16 * WARPS) * (kBwdM + 8) * sizeof(bf16) : 0) + 4 * kBwdM * sizeof(float);
}


}  // namespace smt::gpu::flash_impl
