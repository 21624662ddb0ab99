// CUDA versions of the CPU reference ops (namespace smt::gpu), fp32 device pointers, the same argument
// order as smt::cpu plus a trailing cudaStream_t (GEMM ops: cublasHandle_t, then the stream; the handle's
// stream is set to `stream` by every call). Backward functions ACCUMULATE into every gradient output and
// a null gradient pointer means "not needed", as on the CPU. Every launch and library call is checked
// (smt::Error). Ops that return a host value (cross_entropy_forward, sum_squares) synchronise the stream.
// Temporaries are stream-ordered (cudaMallocAsync). Element index ranges fit int64.
// Precision: the GEMM ops take their A/B operands as GemmOperand (a device pointer tagged fp32 or bf16,
// converting implicitly from const float* and const __nv_bfloat16*); accumulation (CUBLAS_COMPUTE_32F) and
// every output stay fp32. An fp32 call is exactly the fp32 op it always was.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/device_buffer.h"
#include "kernels/adamw.h"
#include "kernels/attention_pattern.h"
#include "kernels/moe.h"

namespace smt::gpu {

// ---- precision: GEMM operand types and casts ----
// kFp32: fp32 operands. kBf16: bf16 operands (fp32 values rounded to nearest even), fp32 accumulation and
// fp32 outputs; the fp32 master copies are never modified.
enum class Precision { kFp32, kBf16 };
const char* precision_name(Precision p);  // "fp32" | "bf16"

// A GEMM operand: device pointer + element type. Not from nullptr (ambiguous on purpose: operands are required).
struct GemmOperand {
  const void* ptr;
  Precision dtype;
  GemmOperand(const float* p) : ptr(p), dtype(Precision::kFp32) {}          // NOLINT: implicit on purpose
  GemmOperand(const __nv_bfloat16* p) : ptr(p), dtype(Precision::kBf16) {}  // NOLINT: implicit on purpose
  // The operand `elements` elements further on (e.g. one expert's slice of a stacked weight).
  GemmOperand offset_by(int64_t elements) const {
    GemmOperand o = *this;
    o.ptr = static_cast<const char*>(ptr) + elements * (dtype == Precision::kBf16 ? 2 : 4);
    return o;
  }
};

// A GEMM result's destination: device pointer + element type (fp32, or bf16: the fp32-accumulated result
// rounded once). From nullptr: not needed.
struct GemmOutput {
  void* ptr = nullptr;
  Precision dtype = Precision::kFp32;
  GemmOutput(std::nullptr_t) {}                                        // NOLINT: implicit on purpose
  GemmOutput(float* p) : ptr(p), dtype(Precision::kFp32) {}          // NOLINT: implicit on purpose
  GemmOutput(__nv_bfloat16* p) : ptr(p), dtype(Precision::kBf16) {}  // NOLINT: implicit on purpose
};

// out[i] = bf16(in[i]) (round to nearest even; CPU reference smt::bf16_bits_from_float in core/bf16.h).
void cast_fp32_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream);
// out[i] = float(in[i]) (exact).
void cast_bf16_to_fp32(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t stream);
// A stream-ordered bf16 copy of in [n].
StreamBuffer<__nv_bfloat16> to_bf16(const float* in, int64_t n, cudaStream_t stream);

// ---- embedding: tokens [T] (device int32), table [V, d], out [T, d] ----
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t T, int64_t d,
                       cudaStream_t stream);
// dtable[tokens[t], :] += dout[t, :] (atomicAdd: the order of the additions is not fixed).
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t T, int64_t d,
                        cudaStream_t stream);

// ---- rmsnorm: x, out [T, d]; weight [d]; rstd [T] (nullable in the forward) ----
// One warp per row, row sums in double (as the CPU). out_bf16 (nullable): also write the result rounded
// to bf16 there (the fused cast for a bf16-operand GEMM); out may then be null (the fp32 result unused).
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int64_t T, int64_t d, float eps,
                     cudaStream_t stream, __nv_bfloat16* out_bf16 = nullptr);
// dweight: per-64-row-block partials (double), then summed in block order (deterministic).
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int64_t T, int64_t d, cudaStream_t stream);

// ---- rope ("rotate half"): x, out [B, N, H, hd]; out may alias x ----
// The rotation table on the device: the CPU's cpu::rope_cos_sin (angles in double, rounded to float),
// [num_positions, head_dim / 2] each; one table serves every sequence of up to num_positions tokens.
struct RopeTable {
  int64_t num_positions = 0, head_dim = 0;
  float theta = 0.0f;
  DeviceBuffer<float> cos_t, sin_t;
};
// Builds the table (blocking upload) unless it already covers N positions of this hd and theta.
void ensure_rope_table(RopeTable& table, int64_t N, int64_t hd, float theta);
// out = R x (fp32) and/or out_bf16 = bf16(R x): either may be null, not both (out_bf16: the fused cast for
// bf16 attention).
void rope_forward(float* out, __nv_bfloat16* out_bf16, const float* x, const RopeTable& table, int64_t B, int64_t N,
                  int64_t H, cudaStream_t stream);
// out = bf16(R float(x)) from a bf16 x (e.g. the bf16 q/k GEMM output, then rotated in place: out may be x).
void rope_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, const RopeTable& table, int64_t B, int64_t N,
                       int64_t H, cudaStream_t stream);
// dx += R^T dout (dx fp32, accumulated), or with dx null: dx_bf16 = bf16(R^T dout) (overwritten; the
// rounded gradient a bf16 GEMM backward takes). Exactly one of dx and dx_bf16.
void rope_backward(float* dx, const float* dout, const RopeTable& table, int64_t B, int64_t N, int64_t H,
                   cudaStream_t stream, __nv_bfloat16* dx_bf16 = nullptr);

// ---- gelu (tanh approximation, the CPU float path's rational tanh with fmaf) ----
void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, cudaStream_t stream);
void gelu_backward_inplace(float* d, const float* x, int64_t n, cudaStream_t stream);

// ---- cross entropy: logits, probs [M, C]; targets [M] (device int32, < 0 = ignored) ----
// Returns the sum of -log p[target] (double, deterministic reduction), synchronises the stream;
// *num_valid (host, nullable) gets the count of rows with target >= 0. Throws if a target is >= C.
double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets, int64_t M, int64_t C,
                             int64_t* num_valid, cudaStream_t stream);
void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets, int64_t M, int64_t C,
                            float scale, cudaStream_t stream);

// ---- mean pool: x [B, N, d]; valid [B, N] (device uint8); out [B, d] ----
void mean_pool_forward(float* out, const float* x, const uint8_t* valid, int64_t B, int64_t N, int64_t d,
                       cudaStream_t stream);
void mean_pool_backward(float* dx, const float* dout, const uint8_t* valid, int64_t B, int64_t N, int64_t d,
                        cudaStream_t stream);

// ---- linear / matmul through cuBLAS (cublasGemmEx, CUBLAS_COMPUTE_32F, fp32 C; fp32 operands: no TF32 unless
// the handle's math mode asks for it (NVIDIA_TF32_OVERRIDE=0 can only turn it off); bf16 operands:
// CUDA_R_16BF A/B, fp32 C) ----
// Row-major C [M, N] = alpha op(A) op(B) + beta C: A is [M, K] (or [K, M] when trans_a), lda its row stride.
// A and B must have the same dtype (throws otherwise).
void gemm_row_major(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, GemmOperand A,
                    int64_t lda, GemmOperand B, int64_t ldb, float beta, float* C, int64_t ldc,
                    cublasHandle_t handle, cudaStream_t stream);
// The same with bf16 A, B and a bf16 C = bf16(op(A) op(B)) (alpha 1, beta 0): fp32 accumulation, one rounding
// at the end (cuBLAS's reduced-precision split-K reduction is disallowed for the call).
void gemm_row_major_bf16_out(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const __nv_bfloat16* A,
                             int64_t lda, const __nv_bfloat16* B, int64_t ldb, __nv_bfloat16* C, int64_t ldc,
                             cublasHandle_t handle, cudaStream_t stream);
// x and w of the same dtype. With bf16 operands the backward rounds dy to bf16 (a stream temporary) for its
// GEMMs; db is summed from the fp32 dy.
void linear_forward(float* y, GemmOperand x, GemmOperand w, const float* b, int64_t M, int64_t n_in, int64_t n_out,
                    bool accumulate, cublasHandle_t handle, cudaStream_t stream);
void linear_backward(float* dx, float* dw, float* db, const float* dy, GemmOperand x, GemmOperand w, int64_t M,
                     int64_t n_in, int64_t n_out, cublasHandle_t handle, cudaStream_t stream);
// y [M, n_out] = bf16(x w) with bf16 x and w, fp32 accumulation, one rounding at the end (no bias, no
// accumulate): the fp32 linear_forward's result rounded to bf16, for an output that only feeds bf16 kernels.
void linear_forward_bf16(__nv_bfloat16* y, GemmOperand x, GemmOperand w, int64_t M, int64_t n_in, int64_t n_out,
                         cublasHandle_t handle, cudaStream_t stream);
// The backward from a dy already rounded to bf16 [M, n_out] (bf16 x and w; no bias): dw and dx (fp32) are
// accumulated as by linear_backward (dx overwritten with overwrite_dx); dx_bf16 instead of dx is overwritten
// with bf16(dy W^T) (rounded once),
// for a gradient that only feeds bf16 kernels. Each output nullable; not dx and dx_bf16 together.
struct LinearGradsBf16 {
  float* dx = nullptr;
  __nv_bfloat16* dx_bf16 = nullptr;
  float* dw = nullptr;
  bool overwrite_dx = false;  // dx = dy W^T instead of dx += (no zeroing pass before the first of several)
};
void linear_backward_bf16(const LinearGradsBf16& grads, const __nv_bfloat16* dy, GemmOperand x, GemmOperand w,
                          int64_t M, int64_t n_in, int64_t n_out, cublasHandle_t handle, cudaStream_t stream);
void matmul_transposed_forward(float* y, GemmOperand x, GemmOperand w, int64_t M, int64_t k, int64_t n,
                               cublasHandle_t handle, cudaStream_t stream);
void matmul_transposed_backward(float* dx, float* dw, const float* dy, GemmOperand x, GemmOperand w, int64_t M,
                                int64_t k, int64_t n, cublasHandle_t handle, cudaStream_t stream);
// out[j] += sum_i a[i, j]; per-256-row-block partials then block order (deterministic).
void add_column_sums(float* out, const float* a, int64_t M, int64_t n, cudaStream_t stream);

// ---- MoE ----
// One thread per token; E <= 64 (throws otherwise). topk_idx [T, k] device int32; lse nullable.
void router_topk_forward(float* probs, int32_t* topk_idx, float* topk_weight, float* lse, const float* logits,
                         int64_t T, int64_t E, int64_t k, cudaStream_t stream);
void router_topk_backward(float* dlogits, const float* dtopk_weight, const float* dprobs, const float* dlse,
                          const float* probs, const int32_t* topk_idx, const float* topk_weight, int64_t T, int64_t E,
                          int64_t k, cudaStream_t stream);

// A RoutingPlan on the device: uploaded from the host (upload_routing_plan, blocking copies) or built
// on the device (build_routing_plan_on_device). Device arrays may be longer than their used length
// (they are reused between calls); the lengths are the ones given here.
struct DeviceRoutingPlan {
  int64_t num_tokens = 0, num_experts = 0, top_k = 0, num_rows = 0;
  DeviceBuffer<int64_t> token_of_row;         // [R]
  DeviceBuffer<int64_t> row_of_assignment;    // [T*k], -1 = dropped
  DeviceBuffer<int64_t> expert_row_offset;    // [E+1] (device copy)
  std::vector<int64_t> expert_row_offset_host;  // [E+1] (host copy: GEMM sizes)
  // Filled by build_routing_plan_on_device only:
  std::vector<int64_t> num_tokens_per_expert_host;  // [E] kept
  std::vector<int64_t> num_routed_per_expert_host;  // [E] before dropping
  DeviceBuffer<int32_t> rank_in_expert;             // [T*k] scratch: position among the expert's assignments
  DeviceBuffer<int64_t> routed_counts;              // [E+1] scratch
};
DeviceRoutingPlan upload_routing_plan(const cpu::RoutingPlan& plan);  // blocking copies
// The same plan as cpu::build_routing_plan(topk_idx, T, E, k, capacity, num_routed_before), built from
// device topk_idx [T, k] into `plan` (its buffers reused when large enough), in two halves:
//  count_routing_on_device: each assignment's rank among its expert's, and the per-expert counts on the
//    host (plan.num_routed_per_expert_host). Synchronises once; throws if an index is outside [0, E).
//  place_routing_on_device: with a capacity (0 = none), expert e keeps its first
//    max(0, capacity - num_routed_before[e]) assignments here (num_routed_before: host [E], the
//    assignments of lower ranks in the global (token, slot) order; nullptr = none), and the rows are placed.
// Between the halves a caller under several ranks gathers the counts (model/global_routing.h).
// build_routing_plan_on_device = both halves, one process. E <= 64.
void count_routing_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             cudaStream_t stream);
void place_routing_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t capacity,
                             const int64_t* num_routed_before, cudaStream_t stream);
void build_routing_plan_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                                  int64_t capacity, cudaStream_t stream);
// The router's loss gradients as the CPU model builds them: d_probs [T, E] = float(aux_scale *
// num_routed_per_expert[e]) (overwritten), d_lse [T] = float(z_coeff * 2 * lse[t] / num_tokens_global)
// (overwritten). num_routed_per_expert and num_tokens_global are the whole (global) batch's.
void router_loss_grads(float* d_probs, float* d_lse, const float* lse, const std::vector<int64_t>& num_routed_per_expert,
                       double aux_scale, double z_coeff, int64_t T, int64_t num_tokens_global, int64_t E,
                       cudaStream_t stream);

// rows [R, d] = x[token_of_row] (fp32, or bf16: e.g. the experts' bf16 GEMM input gathered from a bf16 copy of x)
void permute_forward(float* rows, const float* x, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream);
void permute_forward(__nv_bfloat16* rows, const __nv_bfloat16* x, const DeviceRoutingPlan& plan, int64_t d,
                     cudaStream_t stream);
// dx[t] += sum over kept slots of drows[row(t, j)] (per token, no atomics); accumulate = false: dx[t] = that
// sum (overwritten, every token; no zeroing pass needed).
void permute_backward(float* dx, const float* drows, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                      bool accumulate = true);
// The same from bf16 drows (the experts' bf16 input gradient), summed in fp32.
void permute_backward(float* dx, const __nv_bfloat16* drows, const DeviceRoutingPlan& plan, int64_t d,
                      cudaStream_t stream, bool accumulate = true);
// y[t] += sum_j topk_weight[t, j] * rows_out[row(t, j)]; with a residual [T, d] (nullable):
// y[t] = residual[t] + the same sum (y is only written: the residual connection without a copy).
void unpermute_forward(float* y, const float* rows_out, const float* topk_weight, const DeviceRoutingPlan& plan,
                       int64_t d, cudaStream_t stream, const float* residual = nullptr);
// The same from the experts' bf16 output without its second bias: each assignment a = (t, j) adds
// topk_weight[a] * (float(rows_out[row(a)]) + expert_bias[topk_idx[a]]) (expert_bias [E, d] nullable; with it
// topk_idx [T, k] is required), in fp32.
void unpermute_forward(float* y, const __nv_bfloat16* rows_out, const float* topk_weight, const DeviceRoutingPlan& plan,
                       int64_t d, cudaStream_t stream, const float* residual, const float* expert_bias,
                       const int32_t* topk_idx);
// drows_out[r] += w * dy[t]; dtopk_weight[t, j] += dot(dy[t], rows_out[r]) (one warp per assignment). Nullable.
// accumulate_rows = false: drows_out[r] = w * dy[t] (overwritten; every row [0, R) belongs to exactly one
// kept assignment, so all are written and no zeroing pass is needed). dtopk_weight always accumulates.
void unpermute_backward(float* drows_out, float* dtopk_weight, const float* dy, const float* rows_out,
                        const float* topk_weight, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                        bool accumulate_rows = true);
// The backward of the bf16 unpermute_forward: drows_out[r] = bf16(w * dy[t]) (overwritten, rounded once);
// dtopk_weight[t, j] += dot(dy[t], float(rows_out[r]) + expert_bias[topk_idx[a]]).
void unpermute_backward(__nv_bfloat16* drows_out, float* dtopk_weight, const float* dy, const __nv_bfloat16* rows_out,
                        const float* topk_weight, const DeviceRoutingPlan& plan, int64_t d, cudaStream_t stream,
                        const float* expert_bias, const int32_t* topk_idx);

// Experts' FFN over expert-contiguous rows. expert_row_offset is a HOST array [E+1] (e.g.
// DeviceRoutingPlan::expert_row_offset_host). The per-expert GEMMs are ONE cublasGemmGroupedBatchedEx call
// per GEMM kind (experts with no rows left out); the backends, tried in this order until cuBLAS accepts
// one (each refusal said once on stderr, see experts_gemm_backend()):
//   fp32: "grouped" (fp32 A/B/C), "loop" (one cublasGemmEx per expert);
//   bf16, GEMMs with an fp32 C (an fp32 out or drows, the weight gradients): "grouped" (bf16 A/B,
//         fp32 C: not in cuBLAS's documented type table for the grouped call, so expected to be refused,
//         kept for a cuBLAS that accepts it), "grouped_bf16_out" (bf16 A/B/C with fp32 accumulation into a
//         bf16 staging buffer, then one kernel C = beta C + float(staging) + bias; not for the weight
//         gradients, which run as the loop so that they are accumulated from fp32 results), "loop" (one
//         cublasGemmEx per expert, bf16 A/B, fp32 C);
//   bf16, GEMMs with a bf16 C (the first GEMM's hidden_pre, the hidden gradient, a bf16 out or drows): bf16
//         A/B/C grouped (the documented combination) on every backend but "loop"; one cublasGemmEx per expert
//         on "loop" or where the grouped call is refused (then "loop" from there on).
// Shapes as smt::cpu::experts_forward: rows, out [R, d]; hidden_pre, hidden [R, f]; w1 [E, d, f]; b1 [E, f];
// w2 [E, f, d]; b2 [E, d] (biases nullable; always fp32).
// kFp32: w1, w2 fp32; hidden_pre (with b1), hidden, out fp32 [R, f] arrays; `keep` must be null.
// kBf16: w1/w2 are either fp32 (rounded to bf16 once per call into stream temporaries) or pre-rounded bf16
// copies (used as they are); `keep` is required and the fp32 hidden_pre and hidden are neither written nor
// read (may be null): the hidden side is bf16 only, as in a bf16 autocast (see ExpertsBf16Activations). With
// an fp32 out the second GEMM's bias is an epilogue (the staged fold where that backend runs, else one pass);
// a bf16 out is below.
// The experts' bf16 activations, written by a bf16 experts_forward and read by its experts_backward; [R, .]
// with row 0 = row expert_row_offset[0]:
//   rows [R, d]: the first GEMM's input, bf16(rows), written by the forward unless rows_ready (then the
//     caller filled them, e.g. permuted from a bf16 copy of the layer input, and the fp32 `rows` argument
//     may be null);
//   hidden_pre [R, f]: bf16(rows @ w1[e]), the first GEMM's result WITHOUT the bias, rounded once; the
//     GELU's input is float(hidden_pre) + b1[e];
//   hidden [R, f]: bf16(gelu(float(hidden_pre) + b1[e])), the second GEMM's input.
// (Device allocations as cudaMalloc returns them: 16-byte aligned bases are what the grouped calls need; others
// run as the per-expert loop.)
struct ExpertsBf16Activations {
  __nv_bfloat16* rows = nullptr;
  __nv_bfloat16* hidden_pre = nullptr;
  __nv_bfloat16* hidden = nullptr;
  bool rows_ready = false;
};
// out [R, d] (absolute rows): fp32, or (kBf16 only) bf16(hidden @ w2[e]) WITHOUT b2, which must then be null:
// the combine adds it (the bf16 unpermute_forward's expert_bias), so the output is rounded once and never
// passes through fp32.
void experts_forward(GemmOutput out, float* hidden_pre, float* hidden, const float* rows, GemmOperand w1,
                     const float* b1, GemmOperand w2, const float* b2, const int64_t* expert_row_offset, int64_t E,
                     int64_t d, int64_t f, cublasHandle_t handle, cudaStream_t stream,
                     Precision precision = Precision::kFp32, const ExpertsBf16Activations* keep = nullptr);
// Every gradient is fp32 and accumulated (+=), except drows with drows_accumulate = false: its rows
// [offsets[0], offsets[E]) are overwritten (each belongs to an expert with rows, so all are written; no
// zeroing pass needed). b1 is the forward's bias (nullable).
// kFp32: scratch [R, f] device working memory (overwritten; holds the fp32 dhidden); reads rows, hidden_pre
// (b1 not needed: hidden_pre includes it), hidden. kBf16: `kept` (the forward's) is required; rows,
// hidden_pre, hidden and scratch are not read (may be null); dout is rounded to bf16 before its GEMMs; the
// hidden gradient is bf16(gelu'(float(hidden_pre) + b1) * bf16(dout @ w2^T)) in a stream temporary, and db1
// sums those bf16 values (in double). kBf16 also takes dout in bf16 (e.g. the bf16 unpermute_backward's
// drows_out; then db2 sums those values) and writes drows in bf16 (overwritten: drows_accumulate false).
void experts_backward(GemmOutput drows, float* dw1, float* db1, float* dw2, float* db2, float* scratch, GemmOperand dout,
                      const float* rows, const float* hidden_pre, const float* hidden, GemmOperand w1, const float* b1,
                      GemmOperand w2, const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f,
                      cublasHandle_t handle, cudaStream_t stream, Precision precision = Precision::kFp32,
                      const ExpertsBf16Activations* kept = nullptr, bool drows_accumulate = true);
// A grouped call needs 16-byte aligned operand pointers and row strides (cuBLAS cannot see the pointers in
// its arrays); a call whose operands are not (e.g. d or f not a multiple of 8 in bf16) runs as the loop
// without changing the backend, and is counted by experts_gemm_misaligned_calls().
// The backend the expert GEMMs of that precision are on: "grouped", "grouped_bf16_out" (bf16 only),
// "loop", or "unused" before the first grouped attempt.
std::string experts_gemm_backend(Precision precision = Precision::kFp32);
int64_t experts_gemm_misaligned_calls(Precision precision);
// Tests: start the next expert GEMMs of that precision at `backend` ("auto" = the first of the list above;
// the later fallbacks still apply on a refusal). Throws on an unknown name.
void set_experts_gemm_backend(Precision precision, const std::string& backend);

// ---- optimiser ----
// One fused elementwise kernel; bias corrections computed on the host in double (as the CPU).
void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const cpu::AdamWParams& hp,
                  int64_t step, float grad_scale, cudaStream_t stream);
// Sum of squares in double: fixed grid of per-thread double sums, block tree reductions, then one block over
// the partials (deterministic for a given n). Synchronises the stream.
double sum_squares(const float* x, int64_t n, cudaStream_t stream);
// The same sum written to device memory (*result, one double; 0 for n <= 0); does not synchronise.
void sum_squares_on_device(double* result, const float* x, int64_t n, cudaStream_t stream);

// ---- attention over a BlockMask ----
// The BlockMask lists uploaded to the device (blocking copies).
struct DeviceBlockMask {
  int seq_len = 0, block_size = 0, num_blocks = 0;
  bool causal = false;
  int window = 0;
  int64_t nnz = 0;
  DeviceBuffer<int32_t> q_row_ptr;   // [num_blocks + 1]
  DeviceBuffer<int32_t> q_col_idx;   // [nnz]
  DeviceBuffer<uint8_t> q_kind;      // [nnz] BlockMask::EntryKind
  DeviceBuffer<uint8_t> q_is_full;   // [nnz]
  DeviceBuffer<int32_t> kv_col_ptr;  // [num_blocks + 1]
  DeviceBuffer<int32_t> kv_row_idx;  // [nnz]
  DeviceBuffer<int32_t> kv_entry;    // [nnz]
};
DeviceBlockMask upload_block_mask(const BlockMask& mask);

// q, k, v, out, dout [B, N, H, hd] (N = mask.seq_len); lse [B, H, N]; key_valid [B, N] device uint8, nullable.
// hd <= 128. One block of 256 threads per (batch, head, 64-row slice of a query block); the key blocks of the
// list are visited in sub-tiles of 64 (or 32) keys in dynamic shared memory; online softmax in fp32.
// Rows with no allowed key: out = 0, lse = -inf. Memory: O(B*H*N) extra at most (the backward's D).
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const uint8_t* key_valid, const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd,
                       float scale, cudaStream_t stream);
// dq, dk, dv += ... (each nullable). D = rowsum(dout * out) first; dk/dv by one block per (b, h, 64-key slice)
// over the transposed lists, dq by one block per (b, h, 64-row slice) over the forward lists. Deterministic.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, const uint8_t* key_valid,
                        const DeviceBlockMask& mask, int64_t B, int64_t H, int64_t hd, float scale,
                        cudaStream_t stream);

}  // namespace smt::gpu
