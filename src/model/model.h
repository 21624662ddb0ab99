// The sparse-attention MoE transformer on the CPU: parameters, gradients and AdamW moments in
// one arena (see ParamLayout), activations kept per layer for an explicit backward pass.
// forward() computes logits and losses for a batch; backward() (after a forward on the same
// batch) accumulates the gradient of the total loss into grads().
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "data/batch.h"
#include "kernels/adamw.h"
#include "kernels/attention_pattern.h"
#include "kernels/moe.h"
#include "model/config.h"
#include "model/global_routing.h"
#include "model/param_layout.h"
#include "parallel/expert_exchange.h"

namespace smt {

struct ParallelContext;

struct LossParts {
  double total = 0;     // task + aux + z
  double task = 0;      // mean cross-entropy
  double aux = 0;       // load-balance loss, summed over MoE layers
  double z = 0;         // router z-loss, summed over MoE layers
  int64_t num_targets = 0;  // rows (classifier) or tokens (LM) the task loss averages over
};

// This rank's share of the expert exchange in the last forward, summed over the MoE layers.
struct ExchangeStats {
  int64_t rows_sent = 0;      // plan rows sent to other ranks' experts
  int64_t rows_received = 0;  // rows received from other ranks for this rank's experts
  int64_t expert_rows = 0;    // rows this rank's experts processed (its load)
};

class Model {
 public:
  Model(const ModelConfig& config, float aux_loss_coeff, float z_loss_coeff, uint64_t attention_seed);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int64_t num_params() const;  // without alignment padding

  float* params() { return params_; }
  float* grads() { return grads_; }
  float* adam_m() { return adam_m_; }
  float* adam_v() { return adam_v_; }
  const float* params() const { return params_; }
  float* param(const std::string& name) { return params_ + layout_.at(name).offset; }
  float* grad(const std::string& name) { return grads_ + layout_.at(name).offset; }

  // Train as one rank of a job (nullptr = one process, the default). Each rank then runs forward and
  // backward on its shard of the global batch: losses and loss normalisations, the load-balance
  // statistics and capacity are global (collectives over ctx->world), and MoE layers compute only
  // this rank's E/P experts, exchanging rows within ctx->expert_group. Parameters stay full-size on
  // every rank; only the local experts' slices are used and updated (see optimizer_step).
  void set_parallel(const ParallelContext* ctx) { parallel_ = ctx; }
  const ParallelContext* parallel() const { return parallel_; }
  const ExchangeStats& exchange_stats() const { return exchange_stats_; }

  // N(0, 0.02) matrices (output projections scaled 1/sqrt(2L)), ones for norms, zero biases.
  void init_params(uint64_t seed);
  void zero_grads();

  // Forward on a batch: logits (classifier [B, C] / LM [B, N, V]) and losses. Keeps what the
  // backward needs. with_loss = false skips the task loss (inference).
  LossParts forward(const Batch& batch, bool with_loss = true);
  // Gradient of the last forward's total loss, accumulated into grads().
  void backward();

  const std::vector<float>& logits() const { return logits_; }
  // Class probabilities of the last classifier forward [B, C].
  const std::vector<float>& probs() const { return head_probs_; }
  const std::vector<LayerRouting>& routing() const { return routing_; }
  // Expert choices of the last forward, layer l: [B*N, k] (PAD positions included; a dense-FFN
  // layer has k = 1 and expert 0). Read-only, for routing analysis.
  const std::vector<int32_t>& topk_idx(int layer) const { return acts_.at(layer).topk_idx; }
  const BlockMask& block_mask(int layer, int seq_len);

 private:
  struct LayerPtrs {
    float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *router, *w1, *b1, *w2, *b2;
  };
  struct LayerActs {
    std::vector<float> x_in, a, rstd1, q, k, v, o, lse, x_mid, m, rstd2;  // [T,d] / [T] / [B,H,N]
    std::vector<float> router_logits, router_probs, router_lse;          // [T,E], [T,E], [T]
    std::vector<int32_t> topk_idx;                                       // [T,k]
    std::vector<float> topk_w;                                           // [T,k]
    cpu::RoutingPlan plan;
    std::vector<float> rows, hidden_pre, hidden, rows_out;               // [R,d], [R,f], [R,f], [R,d]
    GlobalRouting global;  // the global batch's counts and capacity (all ranks' tokens)
    // Expert parallelism: the exchange of this layer's rows and the rows of this rank's experts.
    std::shared_ptr<ExpertExchange> exchange;
    std::vector<float> expert_rows, expert_hidden_pre, expert_hidden, expert_rows_out;  // [Re,d], [Re,f], [Re,f], [Re,d]
  };

  LayerPtrs layer_ptrs(float* base, int l) const;
  // The MoE layer's global routing statistics and plan (collectives when parallel).
  void route(LayerActs& A, int64_t T, int64_t E, int64_t k, bool moe);
  bool expert_parallel_layer(bool moe) const;
  void ensure_activations(int64_t B, int64_t N);

  ModelConfig config_;
  ParamLayout layout_;
  float aux_coeff_, z_coeff_;
  uint64_t attention_seed_;
  const ParallelContext* parallel_ = nullptr;
  ExchangeStats exchange_stats_;
  std::vector<float> arena_;  // [4 * layout.total()]: params | grads | adam_m | adam_v
  float *params_, *grads_, *adam_m_, *adam_v_;

  // Block masks per (layer), rebuilt when the sequence length changes.
  std::vector<BlockMask> masks_;
  int mask_seq_len_ = -1;

  // Last forward's batch and activations.
  const Batch* batch_ = nullptr;
  int64_t B_ = 0, N_ = 0;
  bool last_with_loss_ = false;
  std::vector<LayerActs> acts_;
  std::vector<LayerRouting> routing_;
  std::vector<float> x_final_, h_final_, rstd_final_, pooled_;
  std::vector<float> logits_, head_probs_;
  std::vector<int32_t> targets_;
  int64_t num_targets_ = 0;
  // Backward scratch.
  std::vector<float> d_expert_rows_, d_expert_rows_out_;
  std::vector<float> dx_, d_a_, dq_, dk_, dv_, d_o_, d_m_, d_rows_, d_rows_out_, d_hidden_, d_topk_w_, d_probs_,
      d_lse_, d_router_logits_, d_h_, d_pooled_, d_logits_, d_tmp_;
};

// Learning rate at a 1-based step: linear warm-up then cosine to min_lr_ratio * lr at `steps`.
float learning_rate_at(const TrainConfig& train, int64_t step);

// The AdamW hyper-parameters of a step (weight decay set per tensor by the caller) and the
// gradient scale that clips the global norm to train.clip (1 when clip = 0): shared by the CPU
// and GPU optimizer steps.
cpu::AdamWParams adamw_params_at(const TrainConfig& train, int64_t step);
float clip_scale(const TrainConfig& train, double grad_norm);

// Global-norm clipping + AdamW over all parameters (decay only where the layout says).
// Returns the gradient norm before clipping. With model.parallel() set, first sums the gradients
// over the ranks (replicated tensors over all ranks, this rank's expert slices over its
// expert-data-parallel group), clips on the global norm and updates only what this rank holds.
double optimizer_step(Model& model, const TrainConfig& train, int64_t step);
// The two halves of optimizer_step: gradient_norm() sums the gradients over the ranks (collective
// when parallel) and returns the global norm (NaN/Inf if any gradient on any rank is); apply_update()
// clips with that norm and runs AdamW on what this rank holds.
double gradient_norm(Model& model);
void apply_update(Model& model, const TrainConfig& train, int64_t step, double grad_norm);

// True for the expert tensors of MoE layers, which expert parallelism shards by their leading dim.
bool is_sharded_expert_tensor(const ModelConfig& config, const TensorSpec& t);

// The part of tensor t (offsets in the layout) that a rank holds and updates: all of it, or under
// expert parallelism (par->expert_parallel > 1) its local experts' slice of an expert tensor.
struct HeldRange {
  int64_t offset, numel;
};
HeldRange held_range(const ModelConfig& config, const ParallelContext* par, const TensorSpec& t);

// Under expert parallelism: every rank receives the other ranks' experts (parameters and AdamW
// moments), so each holds the full model (before a checkpoint or evaluation). Collective.
void gather_experts(Model& model);

}  // namespace smt
