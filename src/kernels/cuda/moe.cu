// CUDA Mixture-of-Experts ops: router softmax + top-k (one thread per token, E <= 64), the routing plan
// upload, token permutation into expert rows and back (per token / per row, no atomics), and the experts'
// FFN with cuBLAS grouped GEMMs (cublasGemmGroupedBatchedEx: one call per GEMM kind over the experts that
// have rows; per-expert cublasGemmEx loop only as a fallback if cuBLAS refuses the grouped call), with fp32
// or bf16 operands (fp32 accumulation; see gpu_ops.h for the bf16 backends). In bf16 the hidden side stays
// bf16 end to end: the first GEMM and the hidden gradient come out of cuBLAS in bf16, the bias and GELU
// (and its derivative) are one pass over those bf16 rows, and no fp32 [R, f] array is written.
// Invariants: the same float operations and tie rule (lower expert index) as the CPU router; the
// backward in double per token; segmented bias / bias-gradient kernels find the expert by binary search.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/exact_bf16_output.h"
#include "kernels/cuda/gelu_device.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

constexpr int kMaxExperts = 64;

__global__ void router_topk_forward_kernel(float* probs, int32_t* topk_idx, float* topk_weight, float* lse,
                                           const float* logits, int64_t T, int E, int k) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  const float* z = logits + t * E;
  float* p = probs + t * E;
  float pl[kMaxExperts];
  float mx = z[0];
  for (int e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) {
    pl[e] = expf(z[e] - mx);
    sum += pl[e];
  }
  const float inv = 1.0f / sum;
  for (int e = 0; e < E; ++e) {
    pl[e] *= inv;
    p[e] = pl[e];
  }
  if (lse != nullptr) lse[t] = mx + logf(sum);
  int32_t* idx = topk_idx + t * k;
  float* w = topk_weight + t * k;
  unsigned long long taken = 0ull;
  float selected_sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (taken & (1ull << e)) continue;
      if (best < 0 || pl[e] > pl[best]) best = e;  // strict: ties keep the lower index
    }
    taken |= 1ull << best;
    idx[j] = best;
    w[j] = pl[best];
    selected_sum += pl[best];
  }
  for (int j = 0; j < k; ++j) w[j] /= selected_sum;
}

__global__ void router_topk_backward_kernel(float* dlogits, const float* dtopk_weight, const float* dprobs,
                                            const float* dlse, const float* probs, const int32_t* topk_idx,
                                            int64_t T, int E, int k) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  const float* p = probs + t * E;
  const int32_t* idx = topk_idx + t * k;
  float* dz = dlogits + t * E;
  double dot = 0.0;
  if (dprobs != nullptr) {
    const float* dp = dprobs + t * E;
    for (int e = 0; e < E; ++e) dot += double(dp[e]) * double(p[e]);
  }
  double contrib[kMaxExperts];
  const int kk = dtopk_weight != nullptr ? k : 0;
  double S = 0.0, gw = 0.0;
  for (int j = 0; j < kk; ++j) S += double(p[idx[j]]);
  for (int j = 0; j < kk; ++j) gw += double(dtopk_weight[t * k + j]) * double(p[idx[j]]) / S;
  for (int j = 0; j < kk; ++j) {
    contrib[j] = (double(dtopk_weight[t * k + j]) - gw) / S;
    dot += contrib[j] * double(p[idx[j]]);
  }
  const double base = (dlse != nullptr ? double(dlse[t]) : 0.0) - dot;
  if (dprobs != nullptr) {
    const float* dp = dprobs + t * E;
    for (int e = 0; e < E; ++e) dz[e] += static_cast<float>(double(p[e]) * (double(dp[e]) + base));
  } else {
    for (int e = 0; e < E; ++e) dz[e] += static_cast<float>(double(p[e]) * base);
  }
  for (int j = 0; j < kk; ++j) dz[idx[j]] += static_cast<float>(double(p[idx[j]]) * contrib[j]);
}

template <typename T>
__global__ void permute_forward_kernel(T* rows, const T* x, const int64_t* token_of_row, int64_t R, int64_t d) {
  const int64_t total = R * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / d, c = i - r * d;
    rows[i] = x[token_of_row[r] * d + c];
  }
}

using detail::from_float;
using detail::to_float;

// One thread per (token, column): dx[t, c] (+)= sum_j drows[row(t, j), c] (accumulate, or overwrite); drows fp32
// or bf16 (summed in fp32).
template <typename Row>
__global__ void permute_backward_kernel(float* dx, const Row* drows, const int64_t* row_of_assignment, int64_t T,
                                        int64_t k, int64_t d, bool accumulate) {
  const int64_t total = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, c = i - t * d;
    float acc = accumulate ? dx[i] : 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = row_of_assignment[t * k + j];
      if (r >= 0) acc += to_float(drows[r * d + c]);
    }
    dx[i] = acc;
  }
}

// The expert output of assignment a at column c: rows_out[r, c], plus bias[topk[a], c] where the experts'
// second bias was left to the combine (bias nullable; then topk is not read).
template <typename Row>
__device__ __forceinline__ float expert_out(const Row* rows_out, const float* bias, const int32_t* topk, int64_t a,
                                            int64_t r, int64_t c, int64_t d) {
  const float v = to_float(rows_out[r * d + c]);
  return bias != nullptr ? v + bias[int64_t(topk[a]) * d + c] : v;
}

// y[t] = (residual or y)[t] + sum_j w[t, j] expert_out(a = (t, j)); residual may be null (then y accumulates).
template <typename Row>
__global__ void unpermute_forward_kernel(float* y, const float* residual, const Row* rows_out, const float* bias,
                                         const int32_t* topk, const float* topk_weight,
                                         const int64_t* row_of_assignment, int64_t T, int64_t k, int64_t d) {
  const int64_t total = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, c = i - t * d;
    float acc = residual != nullptr ? residual[i] : y[i];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t a = t * k + j, r = row_of_assignment[a];
      if (r >= 0) acc += topk_weight[a] * expert_out(rows_out, bias, topk, a, r, c, d);
    }
    y[i] = acc;
  }
}

// drows_out[r, c] (+)= w * dy[t, c]: one thread per (assignment, column); each row has one assignment. A bf16
// drows_out is only overwritten (accumulate false), the product rounded once.
template <typename Row>
__global__ void unpermute_backward_rows_kernel(Row* drows_out, const float* dy, const float* topk_weight,
                                               const int64_t* row_of_assignment, int64_t A, int64_t k, int64_t d,
                                               bool accumulate) {
  const int64_t total = A * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = i / d, c = i - a * d;
    const int64_t r = row_of_assignment[a];
    if (r < 0) continue;
    const float v = topk_weight[a] * dy[(a / k) * d + c];
    drows_out[r * d + c] = from_float<Row>(accumulate ? to_float(drows_out[r * d + c]) + v : v);
  }
}

// dtopk_weight[a] += dot(dy[t], expert_out(a)): one warp per assignment a.
template <typename Row>
__global__ void unpermute_backward_weight_kernel(float* dtopk_weight, const float* dy, const Row* rows_out,
                                                 const float* bias, const int32_t* topk,
                                                 const int64_t* row_of_assignment, int64_t A, int64_t k, int64_t d) {
  const int64_t a = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (a >= A) return;  // warp-uniform
  const int64_t r = row_of_assignment[a];
  if (r < 0) return;  // warp-uniform
  const float* g = dy + (a / k) * d;
  float s = 0.0f;
  for (int64_t c = lane; c < d; c += 32) s += g[c] * expert_out(rows_out, bias, topk, a, r, c, d);
  s = detail::warp_sum(s);
  if (lane == 0) dtopk_weight[a] += s;
}

// Expert owning row r: the largest e < E with offsets[e] <= r (rows in [offsets[0], offsets[E])).
__device__ __forceinline__ int expert_of_row(const int64_t* offsets, int E, int64_t r) {
  int lo = 0, hi = E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= r) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// out[r, j] += bias[expert(r), j] for rows r in [offsets[0], offsets[E]).
__global__ void expert_bias_add_kernel(float* out, const float* bias, const int64_t* offsets, int E, int64_t n) {
  const int64_t r0 = offsets[0];
  const int64_t total = (offsets[E] - r0) * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = r0 + i / n, j = i % n;
    out[r * n + j] += bias[int64_t(expert_of_row(offsets, E, r)) * n + j];
  }
}

// The fp32 experts' first epilogue: hidden_pre[r, j] += bias[expert(r), j] (bias nullable), then
// hidden = gelu(hidden_pre); rows r in [offsets[0], offsets[E]), both arrays indexed from offsets[0]
// (row 0 = row offsets[0]).
__global__ void expert_bias_gelu_kernel(float* hidden_pre, float* hidden, const float* bias, const int64_t* offsets,
                                        int E, int64_t f) {
  const int64_t r0 = offsets[0];
  const int64_t total = (offsets[E] - r0) * f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = hidden_pre[i];
    if (bias != nullptr) {
      const int64_t r = r0 + i / f, j = i % f;
      v += bias[int64_t(expert_of_row(offsets, E, r)) * f + j];
      hidden_pre[i] = v;
    }
    hidden[i] = detail::gelu_value(v);
  }
}

// The bf16 experts' hidden side, one block per row (grid-stride over rows; the expert is found once per
// row), columns by the threads, two at a time with `pairs` (f even and both bases 4-byte aligned: then every
// row starts 4-byte aligned).
// pre [R, f] is the first GEMM's bf16 output without the bias, rows indexed from offsets[0]; the GELU's
// input is float(pre) + bias[expert(r)] (bias nullable). Forward: hidden = bf16(gelu(input)).
// Backward (in place): dh = bf16(gelu'(input) * float(dh)).
template <bool kBackward>
__global__ void expert_gelu_bf16_kernel(__nv_bfloat16* out, const __nv_bfloat16* pre, const float* bias,
                                        const int64_t* offsets, int E, int64_t f, bool pairs) {
  const int64_t r0 = offsets[0], R = offsets[E] - r0;
  auto apply = [](float x, float g) {
    return __float2bfloat16_rn(kBackward ? detail::gelu_grad(x) * g : detail::gelu_value(x));
  };
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const float* b = bias != nullptr ? bias + int64_t(expert_of_row(offsets, E, r0 + r)) * f : nullptr;
    const __nv_bfloat16* x = pre + r * f;
    __nv_bfloat16* o = out + r * f;
    if (pairs) {
      const auto* x2 = reinterpret_cast<const __nv_bfloat162*>(x);
      auto* o2 = reinterpret_cast<__nv_bfloat162*>(o);
      for (int64_t j = threadIdx.x; j < f / 2; j += blockDim.x) {
        const float2 v = __bfloat1622float2(x2[j]);
        const float2 g = kBackward ? __bfloat1622float2(o2[j]) : float2{0.0f, 0.0f};
        const float2 c = b != nullptr ? float2{b[2 * j], b[2 * j + 1]} : float2{0.0f, 0.0f};
        __nv_bfloat162 res;
        res.x = apply(v.x + c.x, g.x);
        res.y = apply(v.y + c.y, g.y);
        o2[j] = res;
      }
    } else {
      for (int64_t j = threadIdx.x; j < f; j += blockDim.x) {
        const float g = kBackward ? __bfloat162float(o[j]) : 0.0f;
        o[j] = apply(__bfloat162float(x[j]) + (b != nullptr ? b[j] : 0.0f), g);
      }
    }
  }
}

// The experts' bias gradients db[e, j] += sum over the rows of expert e of a[r, j], in two deterministic
// passes over row chunks of at most kBiasRowChunk rows that never straddle two experts (a chunk table built
// on the host from the offsets): one block column per chunk writes its double partial sums, then one per
// expert adds its chunks' partials in chunk order. (One block per expert walking all its rows left most
// of the GPU idle.) Table layout [row0 | row1 | first_chunk]: chunk c covers rows [row0[c], row1[c]);
// expert e owns chunks [first_chunk[e], first_chunk[e + 1]).
constexpr int64_t kBiasRowChunk = 256;

// partial[c, j] = sum of a[r, j] over chunk c's rows (double); a's row 0 is absolute row first_row.
// grid (ceil(n / 256), chunks).
template <typename T>
__global__ void expert_column_partials_kernel(double* partial, const T* a, int64_t first_row, const int64_t* row0,
                                              const int64_t* row1, int64_t n) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t c = blockIdx.y;
  if (j >= n) return;
  double acc = 0.0;
  for (int64_t r = row0[c]; r < row1[c]; ++r) acc += double(to_float(a[(r - first_row) * n + j]));
  partial[c * n + j] = acc;
}

// db[e, j] += sum over expert e's chunks of partial[c, j], in chunk order. grid (ceil(n / 256), E).
__global__ void expert_column_reduce_kernel(float* db, const double* partial, const int64_t* first_chunk, int64_t n) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t e = blockIdx.y;
  if (j >= n) return;
  const int64_t c0 = first_chunk[e], c1 = first_chunk[e + 1];
  if (c1 <= c0) return;
  double acc = 0.0;
  for (int64_t c = c0; c < c1; ++c) acc += partial[c * n + j];
  db[e * n + j] += static_cast<float>(acc);
}

// ---- grouped GEMM over experts ----

// One row-major problem C = op(A) op(B) + beta C (alpha = 1); A and B of the precision run_gemms is given.
// bias (nullable, [N], added to every row of C) is applied ONLY by the staged fold: run_gemms returns
// true when the fold ran; otherwise the caller adds it. C16 (run_gemms_bf16_out only, with C null, beta 0
// and no bias): a bf16 C instead.
struct GemmProblem {
  bool trans_a, trans_b;
  int64_t M, N, K;
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  float beta;
  float* C;
  int64_t ldc;
  const float* bias = nullptr;
  __nv_bfloat16* C16 = nullptr;
};

// One GEMM problem per expert that has rows (the others are left out): make(e, r0, n, rel) with r0 the
// expert's first row, n its row count and rel = r0 - expert_row_offset[0] (the row within the bf16
// copies, which start at the first expert's row).
template <typename Make>
std::vector<GemmProblem> per_expert_problems(const int64_t* expert_row_offset, int64_t E, Make make) {
  std::vector<GemmProblem> problems;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = expert_row_offset[e], n = expert_row_offset[e + 1] - r0;
    if (n > 0) problems.push_back(make(e, r0, n, r0 - expert_row_offset[0]));
  }
  return problems;
}

// Backend state per precision (index 0 fp32, 1 bf16). Values: kUnused, then the backend in use.
enum Backend : int { kUnused = 0, kGrouped = 1, kGroupedBf16Out = 2, kLoop = 3 };
std::atomic<int> g_backend[2] = {kUnused, kUnused};
std::atomic<int64_t> g_misaligned_calls[2] = {0, 0};  // calls run as the loop for their operands' alignment
// A bf16-output call (run_gemms_bf16_out) ran as one grouped bf16 A/B/C call: reported as "grouped_bf16_out"
// while no fp32-output call has decided the backend (the bf16 state is still kUnused).
std::atomic<bool> g_bf16_out_grouped_ran = false;
std::once_flag g_refusal_note[2][3];  // [precision][backend refused - 1]

int pidx(Precision p) { return p == Precision::kBf16 ? 1 : 0; }

void note_refusal(Precision p, Backend refused, Backend next, cublasStatus_t st) {
  static const char* const names[] = {"unused", "cublasGemmGroupedBatchedEx (fp32 C)",
                                      "cublasGemmGroupedBatchedEx (bf16 C)", "loop"};
  std::call_once(g_refusal_note[pidx(p)][refused - 1], [&] {
    std::fprintf(stderr, "smt: %s experts GEMM: %s refused (%s); using %s from now\n", precision_name(p),
                 names[refused], ::smt::detail::cublas_status_string(st),
                 next == kLoop ? "one cublasGemmEx per expert" : names[next]);
  });
}

// C [M, N] (row stride ldc) = beta C + float(S) + bias (bias nullable, [N] per row) with S compact [M, N] bf16;
// beta == 0 does not read C.
struct StagedOutput {
  float* C;
  const __nv_bfloat16* S;
  int64_t M, N, ldc;
  float beta;
  const float* bias;
};

// grid (x: grid-stride over a problem's M*N, y: problem).
__global__ void staged_output_kernel(const StagedOutput* problems) {
  const StagedOutput p = problems[blockIdx.y];
  const int64_t total = p.M * p.N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.N, c = i - r * p.N, o = r * p.ldc + c;
    const float s = __bfloat162float(p.S[i]);
    float v = p.beta == 0.0f ? s : fmaf(p.beta, p.C[o], s);
    if (p.bias != nullptr) v += p.bias[c];
    p.C[o] = v;
  }
}

// One cublasGemmGroupedBatchedEx over `problems` (A/B of type ab_type; C of type c_type at c_ptrs[g] with
// leading dimension c_ld[g], beta c_beta[g]). Returns cuBLAS's status (a refusal is not an error here).
cublasStatus_t grouped_call(const std::vector<GemmProblem>& problems, cudaDataType_t ab_type, cudaDataType_t c_type,
                            const std::vector<void*>& c_ptrs, const std::vector<int>& c_ld,
                            const std::vector<float>& c_beta, cublasHandle_t handle, cudaStream_t stream) {
  const int G = static_cast<int>(problems.size());
  std::vector<cublasOperation_t> ta(G), tb(G);
  std::vector<int> m(G), n(G), kk(G), lda(G), ldb(G), group_size(G, 1);
  std::vector<float> alpha(G, 1.0f);
  // [A' ... | B' ... | C ...], each sub-array Gp = G rounded up to even entries, so that every sub-array
  // starts 16-byte aligned (newer cuBLAS refuses pointer arrays that are not).
  const int Gp = (G + 1) / 2 * 2;
  std::vector<const void*> ptrs(3 * static_cast<size_t>(Gp), nullptr);
  for (int g = 0; g < G; ++g) {
    const GemmProblem& p = problems[g];
    // Column-major: C^T [N, M] = op(B)^T op(A)^T.
    ta[g] = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    tb[g] = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    m[g] = static_cast<int>(p.N);
    n[g] = static_cast<int>(p.M);
    kk[g] = static_cast<int>(p.K);
    lda[g] = static_cast<int>(p.ldb);
    ldb[g] = static_cast<int>(p.lda);
    ptrs[g] = p.B;
    ptrs[Gp + g] = p.A;
    ptrs[2 * Gp + g] = c_ptrs[g];
  }
  StreamBuffer<const void*> dptrs(ptrs.size(), stream);
  // Pageable source: returns once the host data is staged, so `ptrs` may go out of scope after it.
  SMT_CUDA_CHECK(
      cudaMemcpyAsync(dptrs.data(), ptrs.data(), sizeof(void*) * ptrs.size(), cudaMemcpyHostToDevice, stream));
  SMT_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const void* const* a_arr = dptrs.data();
  const void* const* b_arr = dptrs.data() + Gp;
  void* const* c_arr = const_cast<void* const*>(dptrs.data() + 2 * Gp);
  return cublasGemmGroupedBatchedEx(handle, ta.data(), tb.data(), m.data(), n.data(), kk.data(), alpha.data(), a_arr,
                                    ab_type, lda.data(), b_arr, ab_type, ldb.data(), c_beta.data(), c_arr, c_type,
                                    c_ld.data(), G, group_size.data(), CUBLAS_COMPUTE_32F);
}

// bf16 A/B, bf16 C into one compact staging buffer (beta 0, fp32 accumulation inside cuBLAS), then one
// kernel folds the staged results into the fp32 outputs with each problem's beta.
cublasStatus_t grouped_bf16_out(const std::vector<GemmProblem>& problems, cublasHandle_t handle,
                                cudaStream_t stream) {
  const int G = static_cast<int>(problems.size());
  // Each problem's staging block starts 16-byte aligned (8 bf16), as cuBLAS's fast kernels want.
  auto padded = [](int64_t n) { return (n + 7) / 8 * 8; };
  int64_t staged = 0, max_mn = 0;
  for (const GemmProblem& p : problems) staged += padded(p.M * p.N), max_mn = std::max(max_mn, p.M * p.N);
  StreamBuffer<__nv_bfloat16> stage(static_cast<size_t>(staged), stream);
  std::vector<void*> c_ptrs(G);
  std::vector<int> c_ld(G);
  std::vector<float> zero_beta(G, 0.0f);
  std::vector<StagedOutput> outs(G);
  int64_t off = 0;
  for (int g = 0; g < G; ++g) {
    const GemmProblem& p = problems[g];
    c_ptrs[g] = stage.data() + off;
    c_ld[g] = static_cast<int>(p.N);  // row-major [M, N] compact = column-major [N, M] with ld N
    outs[g] = {p.C, stage.data() + off, p.M, p.N, p.ldc, p.beta, p.bias};
    off += padded(p.M * p.N);
  }
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  {
    const detail::ExactBf16OutputScope exact(handle);  // bf16 C: only the final rounding
    st = grouped_call(problems, CUDA_R_16BF, CUDA_R_16BF, c_ptrs, c_ld, zero_beta, handle, stream);
  }
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  StreamBuffer<StagedOutput> douts(outs.size(), stream);
  SMT_CUDA_CHECK(cudaMemcpyAsync(douts.data(), outs.data(), sizeof(StagedOutput) * outs.size(),
                                 cudaMemcpyHostToDevice, stream));
  staged_output_kernel<<<dim3(detail::grid_for(max_mn), static_cast<unsigned>(G)), detail::kThreads, 0, stream>>>(
      douts.data());
  SMT_CUDA_CHECK_LAUNCH();
  return CUBLAS_STATUS_SUCCESS;
}

// True when cuBLAS may refuse the grouped call for `st` because of what it supports (types, sizes,
// architecture): the next backend is then tried. Any other failure is an error.
bool is_refusal(cublasStatus_t st) {
  return st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_ARCH_MISMATCH;
}

// cuBLAS cannot see the pointers inside a grouped call's arrays; for 16-bit operands they must be 16-byte
// aligned with leading dimensions whose rows are too (else misaligned accesses or wrong results). Checked
// on the host; a call that fails it runs as the per-expert loop (cublasGemmEx sees its pointers).
bool grouped_operands_aligned(const std::vector<GemmProblem>& problems, bool bf16) {
  const int64_t ab = bf16 ? 2 : 4;
  auto ok = [](const void* ptr, int64_t ld_bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld_bytes % 16 == 0;
  };
  for (const GemmProblem& p : problems) {
    const bool c_ok = p.C16 != nullptr ? ok(p.C16, p.ldc * 2) : ok(p.C, p.ldc * 4);
    if (!ok(p.A, p.lda * ab) || !ok(p.B, p.ldb * ab) || !c_ok) return false;
  }
  return true;
}

// Sizes a grouped call or cublasGemmEx takes (int), and a grid the staged fold can launch.
void check_problems(const std::vector<GemmProblem>& problems) {
  for (const GemmProblem& p : problems)
    SMT_CHECK(p.M > 0 && p.N > 0 && p.K > 0 && p.M <= INT32_MAX && p.N <= INT32_MAX && p.K <= INT32_MAX &&
                  p.lda <= INT32_MAX && p.ldb <= INT32_MAX && p.ldc <= INT32_MAX,
              "experts GEMM: sizes out of range");
  SMT_CHECK(problems.size() <= 65535, "experts GEMM: too many experts for the grid: ", problems.size());
}

// Runs the problems (fp32 C) on the first backend cuBLAS accepts. Returns true if the staged backend's fold
// ran: then the problems' biases were applied; false if the caller must apply them itself.
// weight_gradients: the outputs are fp32 gradients accumulated over steps: never through the bf16-output
// backend (each GEMM result would be rounded to bf16 before it is added); on that backend the call runs as
// the per-expert loop (fp32 C), which keeps the backend.
bool run_gemms(const std::vector<GemmProblem>& problems, Precision precision, cublasHandle_t handle,
               cudaStream_t stream, bool weight_gradients = false) {
  const int G = static_cast<int>(problems.size());
  if (G == 0) return false;
  check_problems(problems);
  std::atomic<int>& state = g_backend[pidx(precision)];
  const bool bf16 = precision == Precision::kBf16;
  int b = state.load();
  if (b == kUnused) b = kGrouped;
  const bool aligned = grouped_operands_aligned(problems, bf16);  // else this call runs as the loop
  if (!aligned && b != kLoop) ++g_misaligned_calls[pidx(precision)];
  if (b == kGrouped && aligned) {
    std::vector<void*> c_ptrs(G);
    std::vector<int> c_ld(G);
    std::vector<float> beta(G);
    for (int g = 0; g < G; ++g) {
      c_ptrs[g] = problems[g].C;
      c_ld[g] = static_cast<int>(problems[g].ldc);
      beta[g] = problems[g].beta;
    }
    const cublasStatus_t st = grouped_call(problems, bf16 ? CUDA_R_16BF : CUDA_R_32F, CUDA_R_32F, c_ptrs, c_ld, beta,
                                           handle, stream);
    if (st == CUBLAS_STATUS_SUCCESS) {
      state.store(kGrouped);
      return false;
    }
    if (!is_refusal(st)) ::smt::detail::throw_cublas_error(st, "cublasGemmGroupedBatchedEx (fp32 C)", __FILE__, __LINE__);
    b = bf16 ? kGroupedBf16Out : kLoop;
    state.store(b);  // not asked again
    note_refusal(precision, kGrouped, static_cast<Backend>(b), st);
  }
  if (b == kGroupedBf16Out && aligned && !weight_gradients) {
    SMT_CHECK(bf16, "experts GEMM: the bf16-output grouped backend needs bf16 operands");
    const cublasStatus_t st = grouped_bf16_out(problems, handle, stream);
    if (st == CUBLAS_STATUS_SUCCESS) {
      state.store(kGroupedBf16Out);
      return true;
    }
    if (!is_refusal(st)) ::smt::detail::throw_cublas_error(st, "cublasGemmGroupedBatchedEx (bf16 C)", __FILE__, __LINE__);
    b = kLoop;
    note_refusal(precision, kGroupedBf16Out, kLoop, st);
  }
  if (b == kLoop) state.store(kLoop);  // a misaligned call alone (b still grouped) does not change the backend
  for (const GemmProblem& p : problems) {
    const GemmOperand A = bf16 ? GemmOperand(static_cast<const __nv_bfloat16*>(p.A))
                               : GemmOperand(static_cast<const float*>(p.A));
    const GemmOperand B = bf16 ? GemmOperand(static_cast<const __nv_bfloat16*>(p.B))
                               : GemmOperand(static_cast<const float*>(p.B));
    gemm_row_major(p.trans_a, p.trans_b, p.M, p.N, p.K, 1.0f, A, p.lda, B, p.ldb, p.beta, p.C, p.ldc, handle, stream);
  }
  return false;
}

// bf16 problems with a bf16 C (C16; beta 0, no bias): one grouped call with bf16 A/B/C, the combination cuBLAS
// documents for it, on every backend but the loop; refused, the loop from then on. Misaligned operands run this
// call as the loop (counted, the backend kept). Each result is rounded to bf16 once: no bf16 split-K sums.
void run_gemms_bf16_out(const std::vector<GemmProblem>& problems, cublasHandle_t handle, cudaStream_t stream) {
  const int G = static_cast<int>(problems.size());
  if (G == 0) return;
  check_problems(problems);
  for (const GemmProblem& p : problems)
    SMT_CHECK(p.C16 != nullptr && p.C == nullptr && p.beta == 0.0f && p.bias == nullptr,
              "experts GEMM: a bf16 output takes C16 only, beta 0 and no bias");
  std::atomic<int>& state = g_backend[pidx(Precision::kBf16)];
  const bool aligned = grouped_operands_aligned(problems, /*bf16=*/true);
  if (!aligned && state.load() != kLoop) ++g_misaligned_calls[pidx(Precision::kBf16)];
  if (state.load() != kLoop && aligned) {
    std::vector<void*> c_ptrs(G);
    std::vector<int> c_ld(G);
    const std::vector<float> zero_beta(G, 0.0f);
    for (int g = 0; g < G; ++g) {
      c_ptrs[g] = problems[g].C16;
      c_ld[g] = static_cast<int>(problems[g].ldc);
    }
    cublasStatus_t st;
    {
      const detail::ExactBf16OutputScope exact(handle);
      st = grouped_call(problems, CUDA_R_16BF, CUDA_R_16BF, c_ptrs, c_ld, zero_beta, handle, stream);
    }
    if (st == CUBLAS_STATUS_SUCCESS) {
      g_bf16_out_grouped_ran.store(true);
      return;
    }
    if (!is_refusal(st)) ::smt::detail::throw_cublas_error(st, "cublasGemmGroupedBatchedEx (bf16 C)", __FILE__, __LINE__);
    note_refusal(Precision::kBf16, kGroupedBf16Out, kLoop, st);
    state.store(kLoop);  // the staged backend is the same call: refused too; an accepted fp32-C grouped call is
                         // given up with it (speed only)
  }
  for (const GemmProblem& p : problems)
    gemm_row_major_bf16_out(p.trans_a, p.trans_b, p.M, p.N, p.K, static_cast<const __nv_bfloat16*>(p.A), p.lda,
                            static_cast<const __nv_bfloat16*>(p.B), p.ldb, p.C16, p.ldc, handle, stream);
}

void check_offsets(const int64_t* offsets, int64_t E, const char* who) {
  SMT_CHECK(E >= 1, who, ": need E >= 1, got ", E);
  SMT_CHECK(E <= 65535, who, ": too many experts for the grid: ", E);
  for (int64_t e = 0; e < E; ++e)
    SMT_CHECK(offsets[e + 1] >= offsets[e], who, ": offsets must be non-decreasing (expert ", e, ")");
  SMT_CHECK(offsets[0] >= 0, who, ": offsets must be >= 0");
}

// The chunk table of the bias-gradient sums (see expert_column_partials_kernel) for host offsets [E + 1].
struct BiasChunks {
  int64_t num_chunks = 0, E = 0;
  StreamBuffer<int64_t> table;  // [row0 (C) | row1 (C) | first_chunk (E + 1)]
  const int64_t* row0() const { return table.data(); }
  const int64_t* row1() const { return table.data() + num_chunks; }
  const int64_t* first_chunk() const { return table.data() + 2 * num_chunks; }
};
BiasChunks make_bias_chunks(const int64_t* offsets, int64_t E, cudaStream_t stream) {
  std::vector<int64_t> row0, row1, first(static_cast<size_t>(E + 1));
  for (int64_t e = 0; e < E; ++e) {
    first[static_cast<size_t>(e)] = static_cast<int64_t>(row0.size());
    for (int64_t r = offsets[e]; r < offsets[e + 1]; r += kBiasRowChunk) {
      row0.push_back(r);
      row1.push_back(std::min(offsets[e + 1], r + kBiasRowChunk));
    }
  }
  first[static_cast<size_t>(E)] = static_cast<int64_t>(row0.size());
  const int64_t C = static_cast<int64_t>(row0.size());
  SMT_CHECK(C <= 65535, "experts bias gradients: too many row chunks for the grid: ", C);
  std::vector<int64_t> packed;
  packed.reserve(static_cast<size_t>(2 * C + E + 1));
  packed.insert(packed.end(), row0.begin(), row0.end());
  packed.insert(packed.end(), row1.begin(), row1.end());
  packed.insert(packed.end(), first.begin(), first.end());
  BiasChunks chunks{C, E, StreamBuffer<int64_t>(packed.size(), stream)};
  // Pageable source: returns once the host data is staged, so `packed` may go out of scope after it.
  SMT_CUDA_CHECK(cudaMemcpyAsync(chunks.table.data(), packed.data(), packed.size() * sizeof(int64_t),
                                 cudaMemcpyHostToDevice, stream));
  return chunks;
}

// db[e, :] += the column sums of a's rows of expert e (a [*, n] from absolute row first_row; deterministic).
template <typename T>
void add_expert_column_sums(float* db, const T* a, int64_t first_row, const BiasChunks& chunks, int64_t n,
                            cudaStream_t stream) {
  if (chunks.num_chunks == 0 || n <= 0) return;
  const unsigned cols = static_cast<unsigned>((n + detail::kThreads - 1) / detail::kThreads);
  StreamBuffer<double> partial(static_cast<size_t>(chunks.num_chunks * n), stream);
  expert_column_partials_kernel<<<dim3(cols, static_cast<unsigned>(chunks.num_chunks)), detail::kThreads, 0,
                                  stream>>>(partial.data(), a, first_row, chunks.row0(), chunks.row1(), n);
  SMT_CUDA_CHECK_LAUNCH();
  expert_column_reduce_kernel<<<dim3(cols, static_cast<unsigned>(chunks.E)), detail::kThreads, 0, stream>>>(
      db, partial.data(), chunks.first_chunk(), n);
  SMT_CUDA_CHECK_LAUNCH();
}

StreamBuffer<int64_t> upload_offsets(const int64_t* offsets, int64_t E, cudaStream_t stream) {
  StreamBuffer<int64_t> d(static_cast<size_t>(E + 1), stream);
  SMT_CUDA_CHECK(cudaMemcpyAsync(d.data(), offsets, sizeof(int64_t) * (E + 1), cudaMemcpyHostToDevice, stream));
  return d;
}

}  // namespace

std::string experts_gemm_backend(Precision precision) {
  switch (g_backend[pidx(precision)].load()) {
    case kGrouped: return "grouped";
    case kGroupedBf16Out: return "grouped_bf16_out";
    case kLoop: return "loop";
    default: return precision == Precision::kBf16 && g_bf16_out_grouped_ran.load() ? "grouped_bf16_out" : "unused";
  }
}

int64_t experts_gemm_misaligned_calls(Precision precision) { return g_misaligned_calls[pidx(precision)].load(); }

void set_experts_gemm_backend(Precision precision, const std::string& backend) {
  int b;
  if (backend == "auto") b = kUnused;
  else if (backend == "grouped") b = kGrouped;
  else if (backend == "grouped_bf16_out" && precision == Precision::kBf16) b = kGroupedBf16Out;
  else if (backend == "loop") b = kLoop;
  else throw Error(::smt::detail::concat("set_experts_gemm_backend: unknown ", precision_name(precision),
                                         " backend '", backend, "'"));
  g_backend[pidx(precision)].store(b);
  if (precision == Precision::kBf16) g_bf16_out_grouped_ran.store(false);
}

void router_topk_forward(float* probs, int32_t* topk_idx, float* topk_weight, float* lse, const float* logits,
                         int64_t T, int64_t E, int64_t k, cudaStream_t stream) {
  SMT_CHECK(E >= 1 && k >= 1 && k <= E, "gpu::router_topk: need 1 <= k <= E, got k=", k, " E=", E);
  SMT_CHECK(E <= kMaxExperts, "gpu::router_topk: at most ", kMaxExperts, " experts, got ", E);
  if (T <= 0) return;
  SMT_CHECK((T + 127) / 128 <= INT32_MAX, "gpu::router_topk: too many tokens ", T);
  const unsigned blocks = static_cast<unsigned>((T + 127) / 128);  // one thread per token, no grid stride
  router_topk_forward_kernel<<<blocks, 128, 0, stream>>>(probs, topk_idx, topk_weight, lse, logits, T,
                                                         static_cast<int>(E), static_cast<int>(k));
  SMT_CUDA_CHECK_LAUNCH();
}

void router_topk_backward(float* dlogits, const float* dtopk_weight, const float* dprobs, const float* dlse,
                          const float* probs, const int32_t* topk_idx, const float* topk_weight, int64_t T, int64_t E,
                          int64_t k, cudaStream_t stream) {
  (void)topk_weight;
  SMT_CHECK(E >= 1 && k >= 1 && k <= E, "gpu::router_topk_backward: need 1 <= k <= E, got k=", k, " E=", E);
  SMT_CHECK(E <= kMaxExperts, "gpu::router_topk_backward: at most ", kMaxExperts, " experts, got ", E);
  if (T <= 0 || dlogits == nullptr) return;
  SMT_CHECK((T + 127) / 128 <= INT32_MAX, "gpu::router_topk_backward: too many tokens ", T);
  const unsigned blocks = static_cast<unsigned>((T + 127) / 128);
  router_topk_backward_kernel<<<blocks, 128, 0, stream>>>(dlogits, dtopk_weight, dprobs, dlse, probs, topk_idx, T,
                                                          static_cast<int>(E), static_cast<int>(k));
  SMT_CUDA_CHECK_LAUNCH();
}

DeviceRoutingPlan upload_routing_plan(const cpu::RoutingPlan& plan) {
  DeviceRoutingPlan d;
  d.num_tokens = plan.num_tokens;
  d.num_experts = plan.num_experts;
  d.top_k = plan.top_k;
  d.num_rows = plan.num_rows();
  SMT_CHECK(static_cast<int64_t>(plan.row_of_assignment.size()) == plan.num_tokens * plan.top_k,
            "upload_routing_plan: row_of_assignment has ", plan.row_of_assignment.size(), " entries, expected ",
            plan.num_tokens * plan.top_k);
  SMT_CHECK(static_cast<int64_t>(plan.expert_row_offset.size()) == plan.num_experts + 1,
            "upload_routing_plan: expert_row_offset has ", plan.expert_row_offset.size(), " entries");
  d.token_of_row = copy_to_device(plan.token_of_row);
  d.row_of_assignment = copy_to_device(plan.row_of_assignment);
  d.expert_row_offset = copy_to_device(plan.expert_row_offset);
  d.expert_row_offset_host = plan.expert_row_offset;
  return d;
}

void permute_forward(float* rows, const float* x, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream) {
  if (plan.num_rows <= 0 || d <= 0) return;
  permute_forward_kernel<<<detail::grid_for(plan.num_rows * d), detail::kThreads, 0, stream>>>(
      rows, x, plan.token_of_row.data(), plan.num_rows, d);
  SMT_CUDA_CHECK_LAUNCH();
}

void permute_forward(__nv_bfloat16* rows, const __nv_bfloat16* x, const DeviceRoutingPlan& plan, int64_t d,
                     cudaStream_t stream) {
  if (plan.num_rows <= 0 || d <= 0) return;
  permute_forward_kernel<<<detail::grid_for(plan.num_rows * d), detail::kThreads, 0, stream>>>(
      rows, x, plan.token_of_row.data(), plan.num_rows, d);
  SMT_CUDA_CHECK_LAUNCH();
}

namespace {

template <typename Row>
void permute_backward_impl(float* dx, const Row* drows, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                           bool accumulate) {
  if (plan.num_tokens <= 0 || d <= 0 || dx == nullptr) return;
  permute_backward_kernel<<<detail::grid_for(plan.num_tokens * d), detail::kThreads, 0, stream>>>(
      dx, drows, plan.row_of_assignment.data(), plan.num_tokens, plan.top_k, d, accumulate);
  SMT_CUDA_CHECK_LAUNCH();
}

template <typename Row>
void unpermute_forward_impl(float* y, const Row* rows_out, const float* topk_weight, const DeviceRoutingPlan& plan,
                            int64_t d, cudaStream_t stream, const float* residual, const float* expert_bias,
                            const int32_t* topk_idx) {
  if (plan.num_tokens <= 0 || d <= 0) return;
  SMT_CHECK(expert_bias == nullptr || topk_idx != nullptr, "gpu::unpermute_forward: expert_bias needs topk_idx");
  unpermute_forward_kernel<<<detail::grid_for(plan.num_tokens * d), detail::kThreads, 0, stream>>>(
      y, residual, rows_out, expert_bias, topk_idx, topk_weight, plan.row_of_assignment.data(), plan.num_tokens,
      plan.top_k, d);
  SMT_CUDA_CHECK_LAUNCH();
}

template <typename Row>
void unpermute_backward_impl(Row* drows_out, float* dtopk_weight, const float* dy, const Row* rows_out,
                             const float* topk_weight, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                             bool accumulate_rows, const float* expert_bias, const int32_t* topk_idx) {
  const int64_t A = plan.num_tokens * plan.top_k;
  if (A <= 0 || d <= 0) return;
  SMT_CHECK(expert_bias == nullptr || topk_idx != nullptr, "gpu::unpermute_backward: expert_bias needs topk_idx");
  if (drows_out != nullptr) {
    unpermute_backward_rows_kernel<<<detail::grid_for(A * d), detail::kThreads, 0, stream>>>(
        drows_out, dy, topk_weight, plan.row_of_assignment.data(), A, plan.top_k, d, accumulate_rows);
    SMT_CUDA_CHECK_LAUNCH();
  }
  if (dtopk_weight != nullptr) {
    const int64_t warps_per_block = detail::kThreads / 32;
    const int64_t blocks = (A + warps_per_block - 1) / warps_per_block;
    SMT_CHECK(blocks <= INT32_MAX, "gpu::unpermute_backward: too many assignments");
    unpermute_backward_weight_kernel<<<static_cast<unsigned>(blocks), detail::kThreads, 0, stream>>>(
        dtopk_weight, dy, rows_out, expert_bias, topk_idx, plan.row_of_assignment.data(), A, plan.top_k, d);
    SMT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void permute_backward(float* dx, const float* drows, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                      bool accumulate) {
  permute_backward_impl(dx, drows, plan, d, stream, accumulate);
}

void permute_backward(float* dx, const __nv_bfloat16* drows, const DeviceRoutingPlan& plan, int64_t d,
                      cudaStream_t stream, bool accumulate) {
  permute_backward_impl(dx, drows, plan, d, stream, accumulate);
}

void unpermute_forward(float* y, const float* rows_out, const float* topk_weight, const DeviceRoutingPlan& plan,
                       int64_t d, cudaStream_t stream, const float* residual) {
  unpermute_forward_impl(y, rows_out, topk_weight, plan, d, stream, residual, nullptr, nullptr);
}

void unpermute_forward(float* y, const __nv_bfloat16* rows_out, const float* topk_weight, const DeviceRoutingPlan& plan,
                       int64_t d, cudaStream_t stream, const float* residual, const float* expert_bias,
                       const int32_t* topk_idx) {
  unpermute_forward_impl(y, rows_out, topk_weight, plan, d, stream, residual, expert_bias, topk_idx);
}

void unpermute_backward(float* drows_out, float* dtopk_weight, const float* dy, const float* rows_out,
                        const float* topk_weight, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                        bool accumulate_rows) {
  unpermute_backward_impl(drows_out, dtopk_weight, dy, rows_out, topk_weight, plan, d, stream, accumulate_rows, nullptr,
                          nullptr);
}

void unpermute_backward(__nv_bfloat16* drows_out, float* dtopk_weight, const float* dy, const __nv_bfloat16* rows_out,
                        const float* topk_weight, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                        const float* expert_bias, const int32_t* topk_idx) {
  unpermute_backward_impl(drows_out, dtopk_weight, dy, rows_out, topk_weight, plan, d, stream,
                          /*accumulate_rows=*/false, expert_bias, topk_idx);
}

namespace {

// The experts' weights as operands of `precision`: fp32 weights as they are (kFp32) or rounded to bf16 into
// `holder` once (kBf16); pre-rounded bf16 weights as they are (kBf16 only).
const void* weight_operand(GemmOperand w, int64_t n, Precision precision,
                           std::optional<StreamBuffer<__nv_bfloat16>>& holder, cudaStream_t stream, const char* who) {
  SMT_CHECK(w.ptr != nullptr, who, ": null expert weights");
  if (w.dtype == precision) return w.ptr;
  SMT_CHECK(precision == Precision::kBf16, who, ": bf16 weights given for an fp32 call");
  holder.emplace(static_cast<size_t>(n), stream);
  cast_fp32_to_bf16(holder->data(), static_cast<const float*>(w.ptr), n, stream);
  return holder->data();
}

// x [n] as an operand of `precision`: itself (kFp32) or a bf16 copy in `holder` (kBf16).
const void* activation_operand(const float* x, int64_t n, Precision precision,
                               std::optional<StreamBuffer<__nv_bfloat16>>& holder, cudaStream_t stream) {
  if (precision == Precision::kFp32) return x;
  holder.emplace(static_cast<size_t>(n), stream);
  cast_fp32_to_bf16(holder->data(), x, n, stream);
  return holder->data();
}

// kBf16 needs the kept activations (all three buffers); kFp32 refuses them.
void check_kept(const ExpertsBf16Activations* kept, Precision precision, const char* who) {
  if (precision == Precision::kFp32) {
    SMT_CHECK(kept == nullptr, who, ": kept bf16 activations need Precision::kBf16");
    return;
  }
  SMT_CHECK(kept != nullptr, who, ": a bf16 call needs the kept bf16 activations (rows, hidden_pre, hidden)");
  SMT_CHECK(kept->rows != nullptr && kept->hidden_pre != nullptr && kept->hidden != nullptr, who,
            ": kept bf16 activations need rows, hidden_pre and hidden");
}

// Element offset of row r0 of a [*, width] matrix of `precision`, as a byte-correct pointer.
const void* at(const void* base, int64_t elements, Precision precision) {
  const size_t bytes = precision == Precision::kBf16 ? sizeof(__nv_bfloat16) : sizeof(float);
  return static_cast<const char*>(base) + static_cast<size_t>(elements) * bytes;
}

// The bf16 hidden side over rows [offsets[0], offsets[E]): the forward GELU (hidden = bf16(gelu(pre + b1)))
// or, kBackward, dh = bf16(gelu'(pre + b1) * dh) in place.
template <bool kBackward>
void expert_gelu_bf16(__nv_bfloat16* out, const __nv_bfloat16* pre, const float* b1, const int64_t* offsets_device,
                      int64_t E, int64_t R, int64_t f, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(R, int64_t{1} << 20));  // grid-stride over rows
  const bool pairs = f % 2 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0 && reinterpret_cast<uintptr_t>(pre) % 4 == 0;
  expert_gelu_bf16_kernel<kBackward><<<blocks, detail::kThreads, 0, stream>>>(out, pre, b1, offsets_device,
                                                                               static_cast<int>(E), f, pairs);
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void experts_forward(GemmOutput out, float* hidden_pre, float* hidden, const float* rows, GemmOperand w1,
                     const float* b1, GemmOperand w2, const float* b2, const int64_t* expert_row_offset, int64_t E,
                     int64_t d, int64_t f, cublasHandle_t handle, cudaStream_t stream, Precision precision,
                     const ExpertsBf16Activations* keep) {
  check_offsets(expert_row_offset, E, "gpu::experts_forward");
  check_kept(keep, precision, "gpu::experts_forward");
  const Precision P = precision;
  const bool bf16 = P == Precision::kBf16;
  const bool out_bf16 = out.dtype == Precision::kBf16;
  SMT_CHECK(out.ptr != nullptr, "gpu::experts_forward: out is required");
  SMT_CHECK(!out_bf16 || (bf16 && b2 == nullptr),
            "gpu::experts_forward: a bf16 out needs Precision::kBf16 and no b2 (the combine adds it)");
  SMT_CHECK(bf16 || (hidden_pre != nullptr && hidden != nullptr), "gpu::experts_forward: fp32 needs hidden_pre and hidden");
  const bool rows_ready = bf16 && keep->rows_ready;
  SMT_CHECK(rows != nullptr || rows_ready, "gpu::experts_forward: rows may be null only with kept rows_ready");
  const int64_t base = expert_row_offset[0], R = expert_row_offset[E] - base;
  if (R <= 0 || d <= 0 || f <= 0) return;
  std::optional<StreamBuffer<__nv_bfloat16>> w1_h, w2_h;
  const void* W1 = weight_operand(w1, E * d * f, P, w1_h, stream, "gpu::experts_forward");
  const void* W2 = weight_operand(w2, E * f * d, P, w2_h, stream, "gpu::experts_forward");
  StreamBuffer<int64_t> offsets = upload_offsets(expert_row_offset, E, stream);
  // GEMM inputs; the bf16 buffers cover rows [base, base + R) only: index them relative to base.
  const void* X = bf16 ? static_cast<const void*>(keep->rows) : rows + base * d;
  const void* H = bf16 ? static_cast<const void*>(keep->hidden) : hidden + base * f;
  if (bf16 && !rows_ready) cast_fp32_to_bf16(keep->rows, rows + base * d, R * d, stream);
  // hidden_pre [n, f] = rows [n, d] @ w1[e]: fp32 C, or bf16 C straight into the kept hidden_pre.
  const std::vector<GemmProblem> g1 =
      per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
        GemmProblem p{false, false, n, f, d, at(X, rel * d, P), d, at(W1, e * d * f, P), f, 0.0f, nullptr, f};
        if (bf16) p.C16 = keep->hidden_pre + rel * f;
        else p.C = hidden_pre + r0 * f;
        return p;
      });
  if (bf16) {
    run_gemms_bf16_out(g1, handle, stream);
    expert_gelu_bf16<false>(keep->hidden, keep->hidden_pre, b1, offsets.data(), E, R, f, stream);
  } else {
    run_gemms(g1, P, handle, stream);
    expert_bias_gelu_kernel<<<detail::grid_for(R * f), detail::kThreads, 0, stream>>>(
        hidden_pre + base * f, hidden + base * f, b1, offsets.data(), static_cast<int>(E), f);
    SMT_CUDA_CHECK_LAUNCH();
  }
  // out [n, d] = hidden [n, f] @ w2[e] (+ b2[e]): fp32 (the bias in the staged fold where that backend runs), or
  // bf16 straight from cuBLAS (no bias).
  const std::vector<GemmProblem> g2 =
      per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
        GemmProblem p{false, false, n, d, f, at(H, rel * f, P), f, at(W2, e * f * d, P), d, 0.0f, nullptr, d};
        if (out_bf16) {
          p.C16 = static_cast<__nv_bfloat16*>(out.ptr) + r0 * d;
        } else {
          p.C = static_cast<float*>(out.ptr) + r0 * d;
          p.bias = b2 != nullptr ? b2 + e * d : nullptr;
        }
        return p;
      });
  if (out_bf16) {
    run_gemms_bf16_out(g2, handle, stream);
  } else if (!run_gemms(g2, P, handle, stream) && b2 != nullptr) {
    expert_bias_add_kernel<<<detail::grid_for(R * d), detail::kThreads, 0, stream>>>(
        static_cast<float*>(out.ptr), b2, offsets.data(), static_cast<int>(E), d);
    SMT_CUDA_CHECK_LAUNCH();
  }
}

void experts_backward(GemmOutput drows, float* dw1, float* db1, float* dw2, float* db2, float* scratch,
                      GemmOperand dout, const float* rows, const float* hidden_pre, const float* hidden, GemmOperand w1, const float* b1,
                      GemmOperand w2, const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f,
                      cublasHandle_t handle, cudaStream_t stream, Precision precision,
                      const ExpertsBf16Activations* kept, bool drows_accumulate) {
  check_offsets(expert_row_offset, E, "gpu::experts_backward");
  check_kept(kept, precision, "gpu::experts_backward");
  const int64_t base = expert_row_offset[0], R = expert_row_offset[E] - base;
  if (R <= 0 || d <= 0 || f <= 0) return;
  const Precision P = precision;
  const bool bf16 = P == Precision::kBf16;
  const bool drows_bf16 = drows.dtype == Precision::kBf16, dout_bf16 = dout.dtype == Precision::kBf16;
  SMT_CHECK(!drows_bf16 || (bf16 && !drows_accumulate),
            "gpu::experts_backward: a bf16 drows needs Precision::kBf16 and drows_accumulate = false");
  SMT_CHECK(!dout_bf16 || bf16, "gpu::experts_backward: a bf16 dout needs Precision::kBf16");
  const bool need_dh = drows.ptr != nullptr || dw1 != nullptr || db1 != nullptr;
  SMT_CHECK(bf16 || !need_dh || (scratch != nullptr && hidden_pre != nullptr),
            "gpu::experts_backward: fp32 needs scratch and hidden_pre for drows/dw1/db1");
  SMT_CHECK(bf16 || dw2 == nullptr || hidden != nullptr, "gpu::experts_backward: fp32 needs hidden for dw2");
  SMT_CHECK(bf16 || dw1 == nullptr || rows != nullptr, "gpu::experts_backward: fp32 needs rows for dw1");
  // The bias gradients' chunk table first: its size check throws before any gradient is touched.
  std::optional<BiasChunks> chunks;
  if (db1 != nullptr || db2 != nullptr) chunks.emplace(make_bias_chunks(expert_row_offset, E, stream));
  std::optional<StreamBuffer<__nv_bfloat16>> w1_h, w2_h, dout_h, dh_h;
  // Operands (bf16 copies cover rows [base, base + R) and are indexed relative to base).
  const void* DOUT = nullptr;
  if (dout_bf16) DOUT = at(dout.ptr, base * d, P);
  else if (dw2 != nullptr || need_dh)
    DOUT = activation_operand(static_cast<const float*>(dout.ptr) + base * d, R * d, P, dout_h, stream);
  if (dw2 != nullptr) {  // dw2[e] [f, d] += hidden^T [f, n] @ dout [n, d]
    const void* HID = bf16 ? static_cast<const void*>(kept->hidden) : hidden + base * f;
    const std::vector<GemmProblem> g_dw2 =
        per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
          return GemmProblem{true, false, f, d, n, at(HID, rel * f, P), f, at(DOUT, rel * d, P), d, 1.0f,
                             dw2 + e * f * d, d};
        });
    run_gemms(g_dw2, P, handle, stream, /*weight_gradients=*/true);
  }
  if (db2 != nullptr) {
    if (dout_bf16) add_expert_column_sums(db2, static_cast<const __nv_bfloat16*>(dout.ptr), 0, *chunks, d, stream);
    else add_expert_column_sums(db2, static_cast<const float*>(dout.ptr), 0, *chunks, d, stream);
  }
  if (!need_dh) return;
  const void* W2 = weight_operand(w2, E * f * d, P, w2_h, stream, "gpu::experts_backward");
  // dh [n, f] = (dout [n, d] @ w2[e]^T) * gelu'(hidden_pre): fp32 in scratch (absolute rows), or bf16 in a stream
  // temporary (rows relative to base), rounded once after the derivative.
  if (bf16) dh_h.emplace(static_cast<size_t>(R * f), stream);
  const std::vector<GemmProblem> g_dh =
      per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
        GemmProblem p{false, true, n, f, d, at(DOUT, rel * d, P), d, at(W2, e * f * d, P), d, 0.0f, nullptr, f};
        if (bf16) p.C16 = dh_h->data() + rel * f;
        else p.C = scratch + r0 * f;
        return p;
      });
  if (bf16) {
    run_gemms_bf16_out(g_dh, handle, stream);
    const StreamBuffer<int64_t> offsets = upload_offsets(expert_row_offset, E, stream);
    expert_gelu_bf16<true>(dh_h->data(), kept->hidden_pre, b1, offsets.data(), E, R, f, stream);
  } else {
    run_gemms(g_dh, P, handle, stream);
    gelu_backward_inplace(scratch + base * f, hidden_pre + base * f, R * f, stream);
  }
  w2_h.reset();  // stream-ordered free: after the GEMMs above
  const void* DH = bf16 ? static_cast<const void*>(dh_h->data()) : scratch + base * f;
  if (drows.ptr != nullptr) {  // drows [n, d] (+)= dh [n, f] @ w1[e]^T  (w1[e] is [d, f]), fp32 or bf16
    const void* W1 = weight_operand(w1, E * d * f, P, w1_h, stream, "gpu::experts_backward");
    const std::vector<GemmProblem> g_drows =
        per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
          GemmProblem p{false, true, n, d, f, at(DH, rel * f, P), f, at(W1, e * d * f, P), f,
                        drows_accumulate ? 1.0f : 0.0f, nullptr, d};
          if (drows_bf16) p.C16 = static_cast<__nv_bfloat16*>(drows.ptr) + r0 * d;
          else p.C = static_cast<float*>(drows.ptr) + r0 * d;
          return p;
        });
    if (drows_bf16) run_gemms_bf16_out(g_drows, handle, stream);
    else run_gemms(g_drows, P, handle, stream);
  }
  if (dw1 != nullptr) {  // dw1[e] [d, f] += rows^T [d, n] @ dh [n, f]
    const void* X = bf16 ? static_cast<const void*>(kept->rows) : rows + base * d;
    const std::vector<GemmProblem> g_dw1 =
        per_expert_problems(expert_row_offset, E, [&](int64_t e, int64_t r0, int64_t n, int64_t rel) {
          return GemmProblem{true, false, d, f, n, at(X, rel * d, P), d, at(DH, rel * f, P), f, 1.0f,
                             dw1 + e * d * f, f};
        });
    run_gemms(g_dw1, P, handle, stream, /*weight_gradients=*/true);
  }
  if (db1 != nullptr) {
    if (bf16) add_expert_column_sums(db1, dh_h->data(), base, *chunks, f, stream);
    else add_expert_column_sums(db1, scratch, 0, *chunks, f, stream);
  }
}

}  // namespace smt::gpu
