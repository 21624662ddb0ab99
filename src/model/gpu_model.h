// The model on one CUDA device (CUDA builds only), fp32 or bf16 GEMM operands: the same forward and
// backward as smt::Model (model.h, README.md in this folder) step by step with the smt::gpu ops,
// parameters | grads | adam_m | adam_v in one device arena with the same ParamLayout, so a host
// Model uploads into it and downloads from it (initialisation, checkpoints). The routing plan is
// built on the device (gpu::build_routing_plan_on_device: the CPU's plan exactly, so capacity and
// dropping are identical). Activations stay on the device between forward and backward.
// Under kBf16 every activation that only feeds bf16 kernels is produced in bf16 by the kernel before it
// (norm, rope, the v and d_o GEMMs, the MoE gather, flash's dv, rope's backward) rather than written in fp32
// and rounded by a separate pass; the residual stream passes from layer to layer without copies; one
// synchronisation per layer remains (the routing counts size the experts' GEMMs), plus the loss readbacks.
//
// Under several ranks (set_parallel) it is one rank of the CPU Model's scheme (model.h): a shard of
// the global batch, losses, routing counts and capacity over the global batch (host communicators),
// MoE rows exchanged with the experts' owners and gradients summed over device communicators (NCCL,
// or MPI staged through pinned memory). Parameters stay full-size on every rank; only the local
// experts' slices are used and updated, and gather_experts() on the host copy completes the model.
#pragma once
#ifdef SMT_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device_buffer.h"
#include "core/gpu_phase_timer.h"
#include "data/batch.h"
#include "kernels/flash_attention.h"
#include "kernels/gpu_ops.h"
#include "model/model.h"
#include "parallel/device_parallel.h"
#include "parallel/expert_exchange.h"

namespace smt {

class GpuModel {
 public:
  // precision kBf16: the GEMMs of the projections, the experts and the LM head take bf16 operands (a bf16
  // copy of the parameters made at each forward, bf16 copies of their activation inputs) with fp32
  // accumulation; the router, the classifier head, norms, softmaxes and the optimizer stay fp32. Attention
  // then runs on the bf16 tensor-core kernels (kernels/flash_attention.h, dq deterministic) where the head
  // dim is 64 or 128 and the mask block a multiple of 64, else on the fp32 kernels.
  GpuModel(const ModelConfig& config, float aux_loss_coeff, float z_loss_coeff, uint64_t attention_seed,
           cudaStream_t stream, gpu::Precision precision = gpu::Precision::kFp32);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  gpu::Precision precision() const { return precision_; }
  bool uses_flash_attention() const { return use_flash_; }
  // How the flash backward reduces dq (default deterministic); see RunConfig::flash_dq.
  void set_flash_dq_mode(gpu::FlashDqMode mode) { flash_dq_mode_ = mode; }
  gpu::FlashDqMode flash_dq_mode() const { return flash_dq_mode_; }
  cudaStream_t stream() const { return stream_; }

  // Parameters and both AdamW moments from / to a host model of the same config (blocking).
  void upload_from(const Model& host);
  void download_to(Model& host) const;
  std::vector<float> download_grads() const;  // [layout.total()]

  float* params() { return arena_.data(); }
  float* grads() { return arena_.data() + n_; }
  float* adam_m() { return arena_.data() + 2 * n_; }
  float* adam_v() { return arena_.data() + 3 * n_; }

  // Train as one rank of a job (nullptr = one process). The context outlives the model's use of it.
  void set_parallel(const DeviceParallelContext* ctx) { parallel_ = ctx; }
  const DeviceParallelContext* parallel() const { return parallel_; }
  const ExchangeStats& exchange_stats() const { return exchange_stats_; }
  // train.profile: forward, backward and the optimizer mark their phases on `timer` (nullptr = none).
  void set_phase_timer(GpuPhaseTimer* timer) { timer_ = timer; }
  GpuPhaseTimer* phase_timer() const { return timer_; }
  void mark(const char* phase) {
    if (timer_ != nullptr) timer_->mark(phase);
  }

  void zero_grads();
  LossParts forward(const Batch& batch, bool with_loss = true);
  void backward();
  const std::vector<LayerRouting>& routing() const { return routing_; }
  std::vector<float> probs() const;  // head probabilities of the last forward (host copy)
  std::vector<int32_t> topk_idx(int layer) const;  // [B*N, k] expert choices of the last forward (host copy)

 private:
  struct LayerActs {
    // [T,d] / [T] / [B,H,N]. x_in is written by the layer before (the embedding for layer 0). Held only
    // where read: a under kFp32 (kBf16 keeps a16), q/k/v/o without flash attention (with it q16..o16).
    DeviceBuffer<float> x_in, a, rstd1, q, k, v, o, lse, x_mid, m, rstd2;
    DeviceBuffer<float> router_logits, router_probs, router_lse, topk_w;   // [T,E] [T,E] [T] [T,k]
    DeviceBuffer<int32_t> topk_idx;                                         // [T,k]
    gpu::DeviceRoutingPlan dplan;  // built on the device from topk_idx
    GlobalRouting global;          // the global batch's counts and capacity
    DeviceBuffer<float> rows, rows_out;                                     // [R,d] plan order (fp32 paths)
    DeviceBuffer<__nv_bfloat16> rows_out16;  // kBf16, own experts: the experts' output without b2 [R,d]
    // The experts' side: Re rows of the El experts this rank computes, grouped by expert. One process:
    // the plan's rows themselves (Re = R). Expert parallel: the rows received from the group.
    std::shared_ptr<ExpertExchange> exchange;                               // expert parallel only
    DeviceBuffer<float> expert_rows, expert_rows_out;                       // [Re,d] expert parallel only
    DeviceBuffer<float> hidden_pre, hidden;                                 // kFp32: [Re,f]
    DeviceBuffer<__nv_bfloat16> a16, o16;                                   // kBf16: GEMM copies of a, o
    DeviceBuffer<__nv_bfloat16> q16, k16, v16;                              // flash attention's inputs
    DeviceBuffer<__nv_bfloat16> rows16, hidden_pre16, hidden16;             // kBf16: the experts' activations [Re,.]
    DeviceBuffer<__nv_bfloat16> m16;  // kBf16, own experts: bf16 m, gathered into rows16 (rows then unused)
    gpu::ExpertsBf16Activations expert_acts16;  // -> rows16, hidden_pre16, hidden16
  };
  float* p(const std::string& name) { return params() + layout_.at(name).offset; }
  float* g(const std::string& name) { return grads() + layout_.at(name).offset; }
  // A weight as a GEMM operand: the bf16 copy (kBf16) or the fp32 parameter.
  gpu::GemmOperand w(const std::string& name);
  // An activation as a GEMM operand: kBf16 rounds x32 [n] into x16 (kept for the backward).
  gpu::GemmOperand as_operand(const DeviceBuffer<float>& x32, DeviceBuffer<__nv_bfloat16>& x16, int64_t n);
  gpu::GemmOperand saved_operand(const DeviceBuffer<float>& x32, const DeviceBuffer<__nv_bfloat16>& x16) const;
  const gpu::DeviceBlockMask& mask(int layer, int seq_len);
  // Which experts' rows this rank computes in layer A (see LayerActs).
  struct ExpertSide {
    int64_t num_rows, num_experts, first_expert;
    const int64_t* row_offset;  // host [num_experts + 1]
    float *rows, *rows_out;  // [num_rows, d]
  };
  ExpertSide expert_side(LayerActs& A, bool moe);
  bool expert_parallel_layer(bool moe) const;
  // kBf16 on this rank's own experts (no exchange): the layer's expert rows, outputs and their gradients are
  // bf16 (b2 added in the combine); else fp32 rows. The forward and the backward both ask this.
  bool uses_bf16_rows(bool moe) const { return precision_ == gpu::Precision::kBf16 && !expert_parallel_layer(moe); }
  Communicator* host_world() const { return parallel_ != nullptr ? parallel_->host->world.get() : nullptr; }
  friend double gradient_norm(GpuModel& model);

  ModelConfig config_;
  ParamLayout layout_;
  const DeviceParallelContext* parallel_ = nullptr;
  ExchangeStats exchange_stats_;
  GpuPhaseTimer* timer_ = nullptr;
  DeviceBuffer<float> grad_pack_;  // gradient_norm under several ranks: held gradients packed per group
  float aux_coeff_, z_coeff_;
  uint64_t attention_seed_;
  cudaStream_t stream_;
  cublasHandle_t handle_ = nullptr;
  gpu::Precision precision_;
  bool use_flash_;  // attention by gpu::flash_attention_* (bf16, tensor cores) instead of the fp32 kernels
  gpu::FlashDqMode flash_dq_mode_ = gpu::FlashDqMode::kDeterministic;
  DeviceBuffer<__nv_bfloat16> params16_;  // kBf16: [n] the parameters rounded at each forward
  DeviceBuffer<__nv_bfloat16> h_final16_;
  int64_t n_ = 0;
  DeviceBuffer<float> arena_;  // [4 n]
  std::vector<gpu::DeviceBlockMask> masks_;
  gpu::RopeTable rope_;  // cos/sin for the longest sequence seen
  int mask_seq_len_ = -1;

  int64_t B_ = 0, N_ = 0;
  bool last_with_loss_ = false;
  DeviceBuffer<int32_t> tokens_, targets_;
  std::vector<float> ones_host_;          // dense layers' top-1 weights, uploaded from here
  std::vector<int32_t> no_targets_host_;  // -1 targets of a forward without loss
  DeviceBuffer<uint8_t> valid_;
  std::vector<LayerActs> acts_;
  std::vector<LayerRouting> routing_;
  DeviceBuffer<float> x_final_, h_final_, rstd_final_, pooled_, logits_, head_probs_;
  int64_t num_targets_ = 0, head_rows_ = 0, head_cols_ = 0;
  // Scratch reused across steps: the forward's q/k projection before rope, backward gradients.
  DeviceBuffer<float> tmp_, psum_, d_pooled_, d_probs_, d_lse_, d_router_logits_;
  DeviceBuffer<double> lse_sq_;  // [layers] the router z-loss sums of the last forward
  struct BackwardScratch {
    DeviceBuffer<float> dx, d_h, d_logits, d_tmp, d_a, dq, dk, dv, d_o, d_m, d_rows, d_rows_out, d_hidden, d_topk_w;
    DeviceBuffer<float> d_expert_rows, d_expert_rows_out;  // expert parallel: [Re,d]
  } scratch_;
  // Flash attention's backward in bf16: dx rounded for the wo GEMMs, d_o (flash's dout), dv (flash's output),
  // rope's dq / dk (the wq / wk GEMMs' dy, one at a time). [T, d] each.
  DeviceBuffer<__nv_bfloat16> dx16_, d_o16_, dv16_, d_tmp16_;
  // kBf16 on one rank's own experts: the gradients of the experts' bf16 output and input [R, d].
  DeviceBuffer<__nv_bfloat16> d_rows_out16_, d_rows16_;
};

// Global-norm clipping + AdamW on the device (the CPU optimizer_step's arithmetic per tensor), and its
// two halves as on the CPU: gradient_norm (one reduction over the whole gradient range of the arena,
// NaN/Inf if any gradient is) and apply_update (clip with that norm, AdamW per tensor). Both synchronise.
// Under several ranks gradient_norm first sums the held gradients over the device groups (replicated
// tensors over the world, expert slices over the ranks holding the same experts) and returns the
// global norm; apply_update updates what this rank holds (held_range in model.h).
double optimizer_step(GpuModel& model, const TrainConfig& train, int64_t step);
double gradient_norm(GpuModel& model);
void apply_update(GpuModel& model, const TrainConfig& train, int64_t step, double grad_norm);

}  // namespace smt
#endif  // SMT_CUDA
