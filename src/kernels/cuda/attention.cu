// CUDA block-sparse attention over a BlockMask: forward (online softmax in fp32, lse saved) and backward
// (D = rowsum(dout * out); dk/dv per (b, h, 64-key slice) over the transposed lists; dq per (b, h, 64-row
// slice) over the forward lists). Deterministic: every output element is written by one thread, no atomics.
// Invariants: blocks of 256 threads = 8 warps x 8 rows (queries, or keys for dk/dv) = 64-row slices; the
// other side is streamed through dynamic shared memory in sub-tiles of 64 (or 32) positions with row stride
// hd + 1 (conflict-free when lanes walk positions). Element rule = BlockMask::allowed (causal, kWindow entries
// |q - k| <= window) plus key padding; rows with no allowed key: out = 0, lse = -inf, no gradient.
// Variants: hd <= 32 * KC for KC = 1..4 (hd <= 128); never an N x N buffer (extra memory: D, [B, H, N]).
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

constexpr int kWarps = 8;
constexpr int kBlockThreads = kWarps * 32;
constexpr int kRowsPerWarp = 8;
constexpr int kSliceRows = kWarps * kRowsPerWarp;  // 64 rows per block
constexpr int kPerLane = 2;                        // sub-tile positions per lane: chunk <= 64
constexpr int kMaxHeadDim = 128;

struct MaskView {
  const int32_t* q_row_ptr;
  const int32_t* q_col_idx;
  const uint8_t* q_kind;
  const int32_t* kv_col_ptr;
  const int32_t* kv_row_idx;
  const int32_t* kv_entry;
  int N, bs, causal, window;
};

__device__ __forceinline__ bool pos_ok(int qpos, int kpos, uint8_t kind, const MaskView& m) {
  if (m.causal && kpos > qpos) return false;
  if (kind == static_cast<uint8_t>(BlockMask::kWindow)) {
    const int diff = qpos > kpos ? qpos - kpos : kpos - qpos;
    if (diff > m.window) return false;
  }
  return true;
}

// grid (num_blocks * slices, H, B). Shared: qs [64][hd] | ks [chunk][hd+1] | vs [chunk][hd+1] | ps [8][chunk].
template <int KC>
__global__ void __launch_bounds__(kBlockThreads)
    attn_fwd_kernel(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                    const float* __restrict__ k, const float* __restrict__ v, const uint8_t* __restrict__ key_valid,
                    MaskView m, int H, int hd, float scale, int chunk, int slices) {
  extern __shared__ float smem[];
  const int ld = hd + 1;
  float* qs = smem;
  float* ks = qs + kSliceRows * hd;
  float* vs = ks + chunk * ld;
  float* ps = vs + chunk * ld;

  const int qb = blockIdx.x / slices, slice = blockIdx.x % slices;
  const int h = blockIdx.y, b = blockIdx.z;
  const int N = m.N;
  const int row0 = qb * m.bs + slice * kSliceRows;
  const int row_end = min(min(qb * m.bs + m.bs, N), row0 + kSliceRows);
  const int nrows = row_end - row0;
  if (nrows <= 0) return;  // whole block
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t HD = int64_t(H) * hd;
  const int64_t base = int64_t(b) * N * HD + int64_t(h) * hd;  // element (b, 0, h, 0)
  const uint8_t* kvalid = key_valid != nullptr ? key_valid + int64_t(b) * N : nullptr;

  for (int idx = tid; idx < nrows * hd; idx += kBlockThreads) {
    const int r = idx / hd, c = idx - r * hd;
    qs[idx] = q[base + int64_t(row0 + r) * HD + c];
  }

  float mrow[kRowsPerWarp], lrow[kRowsPerWarp], acc[kRowsPerWarp][KC];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    mrow[i] = -INFINITY;
    lrow[i] = 0.0f;
#pragma unroll
    for (int t = 0; t < KC; ++t) acc[i][t] = 0.0f;
  }

  const int e_begin = m.q_row_ptr[qb], e_end = m.q_row_ptr[qb + 1];
  for (int e = e_begin; e < e_end; ++e) {
    const int kb = m.q_col_idx[e];
    const uint8_t kind = m.q_kind[e];
    const int k_begin = kb * m.bs, k_end = min(k_begin + m.bs, N);
    for (int k0 = k_begin; k0 < k_end; k0 += chunk) {
      const int nk = min(chunk, k_end - k0);
      __syncthreads();  // the previous sub-tile is consumed (first pass: qs is written)
      for (int idx = tid; idx < nk * hd; idx += kBlockThreads) {
        const int j = idx / hd, c = idx - j * hd;
        const int64_t g = base + int64_t(k0 + j) * HD + c;
        ks[j * ld + c] = k[g];
        vs[j * ld + c] = v[g];
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int r = warp + kWarps * i;
        if (r >= nrows) continue;  // warp-uniform
        const int qpos = row0 + r;
        const float* qr = qs + r * hd;
        float s[kPerLane];
        float cmax = -INFINITY;
#pragma unroll
        for (int t = 0; t < kPerLane; ++t) {
          const int j = lane + 32 * t;
          s[t] = -INFINITY;
          if (j < nk) {
            const int kpos = k0 + j;
            if (pos_ok(qpos, kpos, kind, m) && (kvalid == nullptr || kvalid[kpos] != 0)) {
              const float* kr = ks + j * ld;
              float dot = 0.0f;
              for (int c = 0; c < hd; ++c) dot += qr[c] * kr[c];
              s[t] = dot * scale;
            }
          }
          cmax = fmaxf(cmax, s[t]);
        }
        cmax = detail::warp_max(cmax);
        const float m_new = fmaxf(mrow[i], cmax);
        if (m_new == -INFINITY) continue;  // nothing allowed yet for this row (warp-uniform)
        const float alpha = expf(mrow[i] - m_new);  // 0 when mrow was -inf
        float psum = 0.0f;
#pragma unroll
        for (int t = 0; t < kPerLane; ++t) {
          const int j = lane + 32 * t;
          const float p = s[t] == -INFINITY ? 0.0f : expf(s[t] - m_new);
          psum += p;
          if (j < chunk) ps[warp * chunk + j] = p;
        }
        psum = detail::warp_sum(psum);
        lrow[i] = lrow[i] * alpha + psum;
        mrow[i] = m_new;
        __syncwarp();
#pragma unroll
        for (int t = 0; t < KC; ++t) {
          const int c = lane + 32 * t;
          if (c < hd) {
            float a = acc[i][t] * alpha;
            for (int j = 0; j < nk; ++j) a += ps[warp * chunk + j] * vs[j * ld + c];
            acc[i][t] = a;
          }
        }
        __syncwarp();  // ps is rewritten by the next row
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    if (r >= nrows) continue;
    const int qpos = row0 + r;
    const bool any = lrow[i] > 0.0f;
    const float inv = any ? 1.0f / lrow[i] : 0.0f;
#pragma unroll
    for (int t = 0; t < KC; ++t) {
      const int c = lane + 32 * t;
      if (c < hd) out[base + int64_t(qpos) * HD + c] = any ? acc[i][t] * inv : 0.0f;
    }
    if (lane == 0) lse[(int64_t(b) * H + h) * N + qpos] = any ? mrow[i] + logf(lrow[i]) : -INFINITY;
  }
}

// D[b, h, n] = sum_c dout * out, one warp per (b, n, h) row.
__global__ void attn_bwd_dot_kernel(float* __restrict__ D, const float* __restrict__ dout,
                                    const float* __restrict__ out, int64_t num_rows, int N, int H, int hd) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= num_rows) return;  // warp-uniform
  const float* a = dout + row * hd;
  const float* o = out + row * hd;
  float s = 0.0f;
  for (int c = lane; c < hd; c += 32) s += a[c] * o[c];
  s = detail::warp_sum(s);
  if (lane == 0) {
    const int64_t h = row % H, n = (row / H) % N, b = row / (int64_t(H) * N);
    D[(b * H + h) * N + n] = s;
  }
}

// dq += scale * sum_j dS_ij k_j. grid as the forward.
// Shared: qs [64][hd] | dos [64][hd] | ks [chunk][hd+1] | vs [chunk][hd+1] | ps [8][chunk].
template <int KC>
__global__ void __launch_bounds__(kBlockThreads)
    attn_bwd_dq_kernel(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ lse,
                       const float* __restrict__ Dvec, const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, const uint8_t* __restrict__ key_valid, MaskView m, int H, int hd,
                       float scale, int chunk, int slices) {
  extern __shared__ float smem[];
  const int ld = hd + 1;
  float* qs = smem;
  float* dos = qs + kSliceRows * hd;
  float* ks = dos + kSliceRows * hd;
  float* vs = ks + chunk * ld;
  float* ps = vs + chunk * ld;

  const int qb = blockIdx.x / slices, slice = blockIdx.x % slices;
  const int h = blockIdx.y, b = blockIdx.z;
  const int N = m.N;
  const int row0 = qb * m.bs + slice * kSliceRows;
  const int row_end = min(min(qb * m.bs + m.bs, N), row0 + kSliceRows);
  const int nrows = row_end - row0;
  if (nrows <= 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t HD = int64_t(H) * hd;
  const int64_t base = int64_t(b) * N * HD + int64_t(h) * hd;
  const int64_t lse_base = (int64_t(b) * H + h) * N;
  const uint8_t* kvalid = key_valid != nullptr ? key_valid + int64_t(b) * N : nullptr;

  for (int idx = tid; idx < nrows * hd; idx += kBlockThreads) {
    const int r = idx / hd, c = idx - r * hd;
    const int64_t g = base + int64_t(row0 + r) * HD + c;
    qs[idx] = q[g];
    dos[idx] = dout[g];
  }

  float lse_r[kRowsPerWarp], D_r[kRowsPerWarp], acc[kRowsPerWarp][KC];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    lse_r[i] = r < nrows ? lse[lse_base + row0 + r] : -INFINITY;
    D_r[i] = r < nrows ? Dvec[lse_base + row0 + r] : 0.0f;
#pragma unroll
    for (int t = 0; t < KC; ++t) acc[i][t] = 0.0f;
  }

  const int e_begin = m.q_row_ptr[qb], e_end = m.q_row_ptr[qb + 1];
  for (int e = e_begin; e < e_end; ++e) {
    const int kb = m.q_col_idx[e];
    const uint8_t kind = m.q_kind[e];
    const int k_begin = kb * m.bs, k_end = min(k_begin + m.bs, N);
    for (int k0 = k_begin; k0 < k_end; k0 += chunk) {
      const int nk = min(chunk, k_end - k0);
      __syncthreads();
      for (int idx = tid; idx < nk * hd; idx += kBlockThreads) {
        const int j = idx / hd, c = idx - j * hd;
        const int64_t g = base + int64_t(k0 + j) * HD + c;
        ks[j * ld + c] = k[g];
        vs[j * ld + c] = v[g];
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int r = warp + kWarps * i;
        if (r >= nrows) continue;             // warp-uniform
        if (lse_r[i] == -INFINITY) continue;  // row without allowed keys: no gradient (warp-uniform)
        const int qpos = row0 + r;
        const float* qr = qs + r * hd;
        const float* dor = dos + r * hd;
#pragma unroll
        for (int t = 0; t < kPerLane; ++t) {
          const int j = lane + 32 * t;
          float ds = 0.0f;
          if (j < nk) {
            const int kpos = k0 + j;
            if (pos_ok(qpos, kpos, kind, m) && (kvalid == nullptr || kvalid[kpos] != 0)) {
              const float* kr = ks + j * ld;
              const float* vr = vs + j * ld;
              float dot = 0.0f, dp = 0.0f;
              for (int c = 0; c < hd; ++c) {
                dot += qr[c] * kr[c];
                dp += dor[c] * vr[c];
              }
              const float p = expf(dot * scale - lse_r[i]);
              ds = p * (dp - D_r[i]);
            }
          }
          if (j < chunk) ps[warp * chunk + j] = ds;
        }
        __syncwarp();
#pragma unroll
        for (int t = 0; t < KC; ++t) {
          const int c = lane + 32 * t;
          if (c < hd) {
            float a = acc[i][t];
            for (int j = 0; j < nk; ++j) a += ps[warp * chunk + j] * ks[j * ld + c];
            acc[i][t] = a;
          }
        }
        __syncwarp();
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    if (r >= nrows) continue;
    const int qpos = row0 + r;
#pragma unroll
    for (int t = 0; t < KC; ++t) {
      const int c = lane + 32 * t;
      if (c < hd) dq[base + int64_t(qpos) * HD + c] += scale * acc[i][t];
    }
  }
}

// dk += scale * sum_i dS_ij q_i ; dv += sum_i P_ij dout_i. grid (num_blocks * slices, H, B) over KEY blocks.
// Shared: ks [64][hd] | vs [64][hd] | qs [chunk][hd+1] | dos [chunk][hd+1] | lse_c [chunk] | D_c [chunk] |
//         ps [8][chunk] | dss [8][chunk].
template <int KC>
__global__ void __launch_bounds__(kBlockThreads)
    attn_bwd_dkv_kernel(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
                        const float* __restrict__ lse, const float* __restrict__ Dvec, const float* __restrict__ q,
                        const float* __restrict__ k, const float* __restrict__ v,
                        const uint8_t* __restrict__ key_valid, MaskView m, int H, int hd, float scale, int chunk,
                        int slices) {
  extern __shared__ float smem[];
  const int ld = hd + 1;
  float* ks = smem;
  float* vs = ks + kSliceRows * hd;
  float* qs = vs + kSliceRows * hd;
  float* dos = qs + chunk * ld;
  float* lse_c = dos + chunk * ld;
  float* D_c = lse_c + chunk;
  float* ps = D_c + chunk;
  float* dss = ps + kWarps * chunk;

  const int kb = blockIdx.x / slices, slice = blockIdx.x % slices;
  const int h = blockIdx.y, b = blockIdx.z;
  const int N = m.N;
  const int key0 = kb * m.bs + slice * kSliceRows;
  const int key_end = min(min(kb * m.bs + m.bs, N), key0 + kSliceRows);
  const int nkeys = key_end - key0;
  if (nkeys <= 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t HD = int64_t(H) * hd;
  const int64_t base = int64_t(b) * N * HD + int64_t(h) * hd;
  const int64_t lse_base = (int64_t(b) * H + h) * N;
  const uint8_t* kvalid = key_valid != nullptr ? key_valid + int64_t(b) * N : nullptr;

  for (int idx = tid; idx < nkeys * hd; idx += kBlockThreads) {
    const int r = idx / hd, c = idx - r * hd;
    const int64_t g = base + int64_t(key0 + r) * HD + c;
    ks[idx] = k[g];
    vs[idx] = v[g];
  }

  bool key_ok[kRowsPerWarp];
  float dk_acc[kRowsPerWarp][KC], dv_acc[kRowsPerWarp][KC];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    key_ok[i] = r < nkeys && (kvalid == nullptr || kvalid[key0 + r] != 0);
#pragma unroll
    for (int t = 0; t < KC; ++t) {
      dk_acc[i][t] = 0.0f;
      dv_acc[i][t] = 0.0f;
    }
  }

  const int x_begin = m.kv_col_ptr[kb], x_end = m.kv_col_ptr[kb + 1];
  for (int x = x_begin; x < x_end; ++x) {
    const int qb = m.kv_row_idx[x];
    const uint8_t kind = m.q_kind[m.kv_entry[x]];
    const int q_begin = qb * m.bs, q_end = min(q_begin + m.bs, N);
    for (int q0 = q_begin; q0 < q_end; q0 += chunk) {
      const int nq = min(chunk, q_end - q0);
      __syncthreads();
      for (int idx = tid; idx < nq * hd; idx += kBlockThreads) {
        const int j = idx / hd, c = idx - j * hd;
        const int64_t g = base + int64_t(q0 + j) * HD + c;
        qs[j * ld + c] = q[g];
        dos[j * ld + c] = dout[g];
      }
      for (int j = tid; j < nq; j += kBlockThreads) {
        lse_c[j] = lse[lse_base + q0 + j];
        D_c[j] = Dvec[lse_base + q0 + j];
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        if (!key_ok[i]) continue;  // warp-uniform
        const int r = warp + kWarps * i;
        const int kpos = key0 + r;
        const float* kr = ks + r * hd;
        const float* vr = vs + r * hd;
#pragma unroll
        for (int t = 0; t < kPerLane; ++t) {
          const int j = lane + 32 * t;
          float p = 0.0f, ds = 0.0f;
          if (j < nq) {
            const int qpos = q0 + j;
            const float l = lse_c[j];
            if (l != -INFINITY && pos_ok(qpos, kpos, kind, m)) {
              const float* qr = qs + j * ld;
              const float* dor = dos + j * ld;
              float dot = 0.0f, dp = 0.0f;
              for (int c = 0; c < hd; ++c) {
                dot += qr[c] * kr[c];
                dp += dor[c] * vr[c];
              }
              p = expf(dot * scale - l);
              ds = p * (dp - D_c[j]);
            }
          }
          if (j < chunk) {
            ps[warp * chunk + j] = p;
            dss[warp * chunk + j] = ds;
          }
        }
        __syncwarp();
#pragma unroll
        for (int t = 0; t < KC; ++t) {
          const int c = lane + 32 * t;
          if (c < hd) {
            float a = dv_acc[i][t], g = dk_acc[i][t];
            for (int j = 0; j < nq; ++j) {
              a += ps[warp * chunk + j] * dos[j * ld + c];
              g += dss[warp * chunk + j] * qs[j * ld + c];
            }
            dv_acc[i][t] = a;
            dk_acc[i][t] = g;
          }
        }
        __syncwarp();
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    if (r >= nkeys) continue;
    const int64_t row = base + int64_t(key0 + r) * HD;
#pragma unroll
    for (int t = 0; t < KC; ++t) {
      const int c = lane + 32 * t;
      if (c < hd) {
        if (dk != nullptr) dk[row + c] += scale * dk_acc[i][t];
        if (dv != nullptr) dv[row + c] += dv_acc[i][t];
      }
    }
  }
}

// ---- host side ----

size_t fwd_smem_floats(int hd, int chunk) {
  return size_t(kSliceRows) * hd + 2 * size_t(chunk) * (hd + 1) + size_t(kWarps) * chunk;
}
size_t dq_smem_floats(int hd, int chunk) {
  return 2 * size_t(kSliceRows) * hd + 2 * size_t(chunk) * (hd + 1) + size_t(kWarps) * chunk;
}
size_t dkv_smem_floats(int hd, int chunk) {
  return 2 * size_t(kSliceRows) * hd + 2 * size_t(chunk) * (hd + 1) + 2 * size_t(chunk) +
         2 * size_t(kWarps) * chunk;
}

int max_dynamic_smem() {
  int dev = 0, optin = 0;
  SMT_CUDA_CHECK(cudaGetDevice(&dev));
  SMT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return optin;
}

// Largest sub-tile (64, else 32) whose shared memory fits the device's opt-in limit.
template <typename SizeFn>
void pick_chunk(SizeFn size_floats, int hd, const char* who, int* chunk, size_t* bytes) {
  const size_t limit = static_cast<size_t>(max_dynamic_smem());
  for (int c : {32 * kPerLane, 32}) {
    const size_t b = size_floats(hd, c) * sizeof(float);
    if (b <= limit) {
      *chunk = c;
      *bytes = b;
      return;
    }
  }
  throw Error(::smt::detail::concat(who, ": head dim ", hd, " needs ", size_floats(hd, 32) * sizeof(float),
                             " bytes of shared memory, the device allows ", limit));
}

MaskView view_of(const DeviceBlockMask& mask) {
  MaskView m;
  m.q_row_ptr = mask.q_row_ptr.data();
  m.q_col_idx = mask.q_col_idx.data();
  m.q_kind = mask.q_kind.data();
  m.kv_col_ptr = mask.kv_col_ptr.data();
  m.kv_row_idx = mask.kv_row_idx.data();
  m.kv_entry = mask.kv_entry.data();
  m.N = mask.seq_len;
  m.bs = mask.block_size;
  m.causal = mask.causal ? 1 : 0;
  m.window = mask.window;
  return m;
}

void check_args(const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, const char* who) {
  SMT_CHECK(hd >= 1 && hd <= kMaxHeadDim, who, ": head dim must be in [1, ", kMaxHeadDim, "], got ", hd);
  SMT_CHECK(B >= 0 && B <= 65535 && H >= 0 && H <= 65535, who, ": B and H must be in [0, 65535], got B=", B,
            " H=", H);
  SMT_CHECK(mask.block_size > 0 && mask.num_blocks >= 0, who, ": mask not uploaded");
  const int64_t slices = (mask.block_size + kSliceRows - 1) / kSliceRows;
  SMT_CHECK(int64_t(mask.num_blocks) * slices <= INT32_MAX, who, ": too many blocks");
}

dim3 grid_of(const DeviceBlockMask& mask, int64_t B, int64_t H, int* slices) {
  *slices = (mask.block_size + kSliceRows - 1) / kSliceRows;
  return dim3(static_cast<unsigned>(int64_t(mask.num_blocks) * *slices), static_cast<unsigned>(H),
              static_cast<unsigned>(B));
}

template <int KC>
void launch_forward(float* out, float* lse, const float* q, const float* k, const float* v, const uint8_t* key_valid,
                    const DeviceBlockMask& mask, int64_t B, int64_t H, int hd, float scale, cudaStream_t stream) {
  int chunk = 0;
  size_t bytes = 0;
  pick_chunk(fwd_smem_floats, hd, "gpu::attention_forward", &chunk, &bytes);
  SMT_CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_kernel<KC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  int slices = 1;
  const dim3 grid = grid_of(mask, B, H, &slices);
  attn_fwd_kernel<KC><<<grid, kBlockThreads, bytes, stream>>>(out, lse, q, k, v, key_valid, view_of(mask),
                                                              static_cast<int>(H), hd, scale, chunk, slices);
  SMT_CUDA_CHECK_LAUNCH();
}

template <int KC>
void launch_backward(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* D,
                     const float* q, const float* k, const float* v, const uint8_t* key_valid,
                     const DeviceBlockMask& mask, int64_t B, int64_t H, int hd, float scale, cudaStream_t stream) {
  int slices = 1;
  const dim3 grid = grid_of(mask, B, H, &slices);
  if (dk != nullptr || dv != nullptr) {
    int chunk = 0;
    size_t bytes = 0;
    pick_chunk(dkv_smem_floats, hd, "gpu::attention_backward (dk/dv)", &chunk, &bytes);
    SMT_CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dkv_kernel<KC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
    attn_bwd_dkv_kernel<KC><<<grid, kBlockThreads, bytes, stream>>>(dk, dv, dout, lse, D, q, k, v, key_valid,
                                                                    view_of(mask), static_cast<int>(H), hd, scale,
                                                                    chunk, slices);
    SMT_CUDA_CHECK_LAUNCH();
  }
  if (dq != nullptr) {
    int chunk = 0;
    size_t bytes = 0;
    pick_chunk(dq_smem_floats, hd, "gpu::attention_backward (dq)", &chunk, &bytes);
    SMT_CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dq_kernel<KC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
    attn_bwd_dq_kernel<KC><<<grid, kBlockThreads, bytes, stream>>>(dq, dout, lse, D, q, k, v, key_valid,
                                                                   view_of(mask), static_cast<int>(H), hd, scale,
                                                                   chunk, slices);
    SMT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

DeviceBlockMask upload_block_mask(const BlockMask& mask) {
  const size_t nb = static_cast<size_t>(mask.num_blocks);
  const size_t nnz = mask.q_col_idx.size();
  SMT_CHECK(mask.q_row_ptr.size() == nb + 1 && mask.kv_col_ptr.size() == nb + 1 && mask.q_kind.size() == nnz &&
                mask.q_is_full.size() == nnz && mask.kv_row_idx.size() == nnz && mask.kv_entry.size() == nnz,
            "upload_block_mask: inconsistent BlockMask arrays");
  SMT_CHECK(mask.block_size > 0 && mask.seq_len > 0, "upload_block_mask: empty mask");
  DeviceBlockMask d;
  d.seq_len = mask.seq_len;
  d.block_size = mask.block_size;
  d.num_blocks = mask.num_blocks;
  d.causal = mask.config.causal;
  d.window = mask.config.window;
  d.nnz = static_cast<int64_t>(nnz);
  d.q_row_ptr = copy_to_device(mask.q_row_ptr);
  d.q_col_idx = copy_to_device(mask.q_col_idx);
  d.q_kind = copy_to_device(mask.q_kind);
  d.q_is_full = copy_to_device(mask.q_is_full);
  d.kv_col_ptr = copy_to_device(mask.kv_col_ptr);
  d.kv_row_idx = copy_to_device(mask.kv_row_idx);
  d.kv_entry = copy_to_device(mask.kv_entry);
  return d;
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_valid, const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd,
                       float scale, cudaStream_t stream) {
  check_args(mask, B, H, hd, "gpu::attention_forward");
  if (B == 0 || H == 0 || mask.num_blocks == 0) return;
  const int h = static_cast<int>(hd);
  switch ((h + 31) / 32) {
    case 1: launch_forward<1>(out, lse, q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    case 2: launch_forward<2>(out, lse, q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    case 3: launch_forward<3>(out, lse, q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    default: launch_forward<4>(out, lse, q, k, v, key_valid, mask, B, H, h, scale, stream); break;
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_valid,
                        const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale,
                        cudaStream_t stream) {
  check_args(mask, B, H, hd, "gpu::attention_backward");
  if (B == 0 || H == 0 || mask.num_blocks == 0) return;
  if (dq == nullptr && dk == nullptr && dv == nullptr) return;
  const int64_t N = mask.seq_len;
  const int64_t num_rows = B * N * H;
  StreamBuffer<float> D(static_cast<size_t>(num_rows), stream);
  const int64_t dot_blocks = (num_rows * 32 + detail::kThreads - 1) / detail::kThreads;
  SMT_CHECK(dot_blocks <= INT32_MAX, "gpu::attention_backward: too many rows");
  attn_bwd_dot_kernel<<<static_cast<unsigned>(dot_blocks), detail::kThreads, 0, stream>>>(
      D.data(), dout, out, num_rows, static_cast<int>(N), static_cast<int>(H), static_cast<int>(hd));
  SMT_CUDA_CHECK_LAUNCH();
  const int h = static_cast<int>(hd);
  switch ((h + 31) / 32) {
    case 1: launch_backward<1>(dq, dk, dv, dout, lse, D.data(), q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    case 2: launch_backward<2>(dq, dk, dv, dout, lse, D.data(), q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    case 3: launch_backward<3>(dq, dk, dv, dout, lse, D.data(), q, k, v, key_valid, mask, B, H, h, scale, stream); break;
    default: launch_backward<4>(dq, dk, dv, dout, lse, D.data(), q, k, v, key_valid, mask, B, H, h, scale, stream); break;
  }
}

}  // namespace smt::gpu
