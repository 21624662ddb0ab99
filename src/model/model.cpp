// Model forward/backward on the CPU (see model.h and README.md in this folder for the definition).
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"
#include "kernels/pool.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "parallel/parallel_context.h"

namespace smt {

namespace {
template <typename T>
void resize_zero(std::vector<T>& v, size_t n) {
  v.assign(n, T{});
}
template <typename T>
void ensure_size(std::vector<T>& v, size_t n) {
  if (v.size() != n) v.resize(n);
}
void zero(std::vector<float>& v, size_t n) {
  if (v.size() != n) v.resize(n);
  if (n > 0) std::memset(v.data(), 0, n * sizeof(float));  // memset of a null pointer is UB even for 0 bytes
}
}  // namespace

Model::Model(const ModelConfig& config, float aux_loss_coeff, float z_loss_coeff, uint64_t attention_seed)
    : config_(config),
      layout_(config),
      aux_coeff_(aux_loss_coeff),
      z_coeff_(z_loss_coeff),
      attention_seed_(attention_seed) {
  const int64_t n = layout_.total();
  arena_.assign(static_cast<size_t>(4 * n), 0.0f);
  params_ = arena_.data();
  grads_ = params_ + n;
  adam_m_ = grads_ + n;
  adam_v_ = adam_m_ + n;
}

int64_t Model::num_params() const {
  int64_t n = 0;
  for (const auto& t : layout_.tensors()) n += t.numel;
  return n;
}

void Model::init_params(uint64_t seed) {
  std::fill(params_, params_ + layout_.total(), 0.0f);
  const double out_scale = 1.0 / std::sqrt(2.0 * config_.layers);
  uint64_t stream = 0;
  for (const auto& t : layout_.tensors()) {
    float* p = params_ + t.offset;
    ++stream;
    const bool is_norm = t.name.ends_with("norm");
    const bool is_bias = !t.decay && !is_norm;
    if (is_norm) {
      std::fill(p, p + t.numel, 1.0f);
    } else if (is_bias) {
      std::fill(p, p + t.numel, 0.0f);
    } else {
      const bool is_out = t.name.ends_with(".wo") || t.name.ends_with("experts.w2");
      const double std = 0.02 * (is_out ? out_scale : 1.0);
      Rng rng(seed, stream);
      for (int64_t i = 0; i < t.numel; ++i) p[i] = static_cast<float>(std * rng.normal());
    }
  }
}

void Model::zero_grads() { std::fill(grads_, grads_ + layout_.total(), 0.0f); }

Model::LayerPtrs Model::layer_ptrs(float* base, int l) const {
  const std::string p = "layers." + std::to_string(l) + ".";
  auto at = [&](const std::string& n) { return base + layout_.at(p + n).offset; };
  const bool moe = ParamLayout::layer_is_moe(config_, l);
  return LayerPtrs{at("attn_norm"), at("wq"),         at("wk"),         at("wv"),
                   at("wo"),        at("ffn_norm"),   moe ? at("router") : nullptr,
                   at("experts.w1"), at("experts.b1"), at("experts.w2"), at("experts.b2")};
}

const BlockMask& Model::block_mask(int layer, int seq_len) {
  if (mask_seq_len_ != seq_len) {
    masks_.clear();
    const AttnPatternConfig pc = config_.attention_pattern(attention_seed_);
    for (int l = 0; l < config_.layers; ++l) masks_.push_back(build_block_mask(pc, seq_len, l));
    mask_seq_len_ = seq_len;
  }
  return masks_[layer];
}

void Model::ensure_activations(int64_t B, int64_t N) {
  if (B == B_ && N == N_ && static_cast<int>(acts_.size()) == config_.layers) return;
  B_ = B;
  N_ = N;
  const size_t T = B * N, d = config_.d_model, H = config_.heads;
  acts_.assign(config_.layers, LayerActs{});
  for (int l = 0; l < config_.layers; ++l) {
    auto& a = acts_[l];
    const size_t E = ParamLayout::layer_is_moe(config_, l) ? config_.experts : 1;
    const size_t k = ParamLayout::layer_is_moe(config_, l) ? config_.top_k : 1;
    for (auto* v : {&a.x_in, &a.a, &a.q, &a.k, &a.v, &a.o, &a.x_mid, &a.m}) v->resize(T * d);
    a.rstd1.resize(T);
    a.rstd2.resize(T);
    a.lse.resize(B * H * N);
    a.router_logits.resize(T * E);
    a.router_probs.resize(T * E);
    a.router_lse.resize(T);
    a.topk_idx.resize(T * k);
    a.topk_w.resize(T * k);
  }
  routing_.assign(config_.layers, LayerRouting{});
}

LossParts Model::forward(const Batch& batch, bool with_loss) {
  const int64_t B = batch.batch_size, N = batch.seq_len, T = B * N;
  const int64_t d = config_.d_model, H = config_.heads, hd = config_.head_dim(), f = config_.expert_hidden;
  SMT_CHECK(static_cast<int64_t>(batch.tokens.size()) == T, "batch has ", batch.tokens.size(), " tokens, expected ",
            T);
  for (int32_t t : batch.tokens) SMT_CHECK(t >= 0 && t < config_.vocab_size, "token id ", t, " outside [0, model.vocab_size = ", config_.vocab_size, ")");
  ensure_activations(B, N);
  batch_ = &batch;
  last_with_loss_ = with_loss;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  LossParts loss;

  exchange_stats_ = ExchangeStats{};
  std::vector<float> x(T * d);
  cpu::embedding_forward<float>(x.data(), batch.tokens.data(), params_ + layout_.at("embedding").offset, T, d);

  for (int l = 0; l < config_.layers; ++l) {
    LayerActs& A = acts_[l];
    const LayerPtrs P = layer_ptrs(params_, l);
    const bool moe = ParamLayout::layer_is_moe(config_, l);
    const int64_t E = moe ? config_.experts : 1, k = moe ? config_.top_k : 1;
    std::copy(x.begin(), x.end(), A.x_in.begin());

    // Attention sub-block.
    cpu::rmsnorm_forward<float>(A.a.data(), A.rstd1.data(), A.x_in.data(), P.attn_norm, T, d, config_.norm_eps);
    std::vector<float>& tmp = d_tmp_;
    ensure_size(tmp, T * d);
    cpu::linear_forward<float>(tmp.data(), A.a.data(), P.wq, nullptr, T, d, d);
    cpu::rope_forward<float>(A.q.data(), tmp.data(), B, N, H, hd, config_.rope_theta);
    cpu::linear_forward<float>(tmp.data(), A.a.data(), P.wk, nullptr, T, d, d);
    cpu::rope_forward<float>(A.k.data(), tmp.data(), B, N, H, hd, config_.rope_theta);
    cpu::linear_forward<float>(A.v.data(), A.a.data(), P.wv, nullptr, T, d, d);
    const BlockMask& mask = block_mask(l, static_cast<int>(N));
    cpu::attention_forward<float>(A.o.data(), A.lse.data(), A.q.data(), A.k.data(), A.v.data(),
                                  batch.valid.data(), mask, B, H, hd, scale);
    std::copy(A.x_in.begin(), A.x_in.end(), A.x_mid.begin());
    cpu::linear_forward<float>(A.x_mid.data(), A.o.data(), P.wo, nullptr, T, d, d, /*accumulate=*/true);

    // Feed-forward sub-block (MoE or dense).
    cpu::rmsnorm_forward<float>(A.m.data(), A.rstd2.data(), A.x_mid.data(), P.ffn_norm, T, d, config_.norm_eps);
    if (moe) {
      cpu::linear_forward<float>(A.router_logits.data(), A.m.data(), P.router, nullptr, T, d, E);
      cpu::router_topk_forward<float>(A.router_probs.data(), A.topk_idx.data(), A.topk_w.data(),
                                      A.router_lse.data(), A.router_logits.data(), T, E, k);
    } else {
      std::fill(A.topk_idx.begin(), A.topk_idx.end(), 0);
      std::fill(A.topk_w.begin(), A.topk_w.end(), 1.0f);
    }
    route(A, T, E, k, moe);
    const int64_t R = A.plan.num_rows();
    A.rows.resize(R * d);
    A.rows_out.resize(R * d);
    cpu::permute_forward<float>(A.rows.data(), A.m.data(), A.plan, d);
    if (!expert_parallel_layer(moe)) {
      A.hidden_pre.resize(R * f);
      A.hidden.resize(R * f);
      cpu::experts_forward<float>(A.rows_out.data(), A.hidden_pre.data(), A.hidden.data(), A.rows.data(), P.w1, P.b1,
                                  P.w2, P.b2, A.plan.expert_row_offset.data(), E, d, f);
    } else {
      // Dispatch this rank's rows to the experts' owners, run the local experts, combine back.
      A.exchange = std::make_shared<ExpertExchange>(*parallel_->expert_group, A.plan.num_tokens_per_expert);
      const int64_t Re = A.exchange->num_expert_rows(), e0 = parallel_->first_local_expert();
      const int64_t El = parallel_->num_local_experts();
      A.expert_rows.resize(Re * d);
      A.expert_hidden_pre.resize(Re * f);
      A.expert_hidden.resize(Re * f);
      A.expert_rows_out.resize(Re * d);
      A.exchange->to_experts(A.rows.data(), A.expert_rows.data(), d);
      cpu::experts_forward<float>(A.expert_rows_out.data(), A.expert_hidden_pre.data(), A.expert_hidden.data(),
                                  A.expert_rows.data(), P.w1 + e0 * d * f, P.b1 + e0 * f, P.w2 + e0 * f * d,
                                  P.b2 + e0 * d, A.exchange->local_expert_row_offset().data(), El, d, f);
      A.exchange->from_experts(A.expert_rows_out.data(), A.rows_out.data(), d);
      exchange_stats_.rows_sent += A.exchange->rows_sent_to_others();
      exchange_stats_.rows_received += A.exchange->rows_received_from_others();
      exchange_stats_.expert_rows += Re;
    }
    x = A.x_mid;
    cpu::unpermute_forward<float>(x.data(), A.rows_out.data(), A.topk_w.data(), A.plan, d);

    routing_[l] = routing_stats(A.global, moe);
    if (moe) {
      // Switch load-balance loss (Megatron normalisation) and router z-loss, over the global batch.
      std::vector<double> sums(E + 1, 0.0);  // [E] router probability per expert summed over tokens, z
      for (int64_t e = 0; e < E; ++e)
        for (int64_t t = 0; t < T; ++t) sums[e] += A.router_probs[t * E + e];
      for (int64_t t = 0; t < T; ++t) sums[E] += static_cast<double>(A.router_lse[t]) * A.router_lse[t];
      const RouterLosses rl = router_losses(parallel_ ? parallel_->world.get() : nullptr, std::move(sums), A.global, k,
                                            aux_coeff_, z_coeff_);
      loss.aux += rl.aux;
      loss.z += rl.z;
    }
  }

  // Head.
  x_final_ = std::move(x);
  h_final_.resize(T * d);
  rstd_final_.resize(T);
  cpu::rmsnorm_forward<float>(h_final_.data(), rstd_final_.data(), x_final_.data(),
                              params_ + layout_.at("final_norm").offset, T, d, config_.norm_eps);
  if (config_.head == "lm") {
    const int64_t V = config_.vocab_size;
    logits_.resize(T * V);
    cpu::matmul_transposed_forward<float>(logits_.data(), h_final_.data(), params_ + layout_.at("embedding").offset, T,
                                          d, V);
    if (with_loss) {
      targets_ = batch.lm_targets;
      head_probs_.resize(T * V);
      loss.task = cpu::cross_entropy_forward<float>(head_probs_.data(), logits_.data(), targets_.data(), T, V,
                                                    &num_targets_);
    }
  } else {
    const int64_t C = config_.num_classes;
    pooled_.resize(B * d);
    cpu::mean_pool_forward<float>(pooled_.data(), h_final_.data(), batch.valid.data(), B, N, d);
    logits_.resize(B * C);
    cpu::linear_forward<float>(logits_.data(), pooled_.data(), params_ + layout_.at("classifier.w").offset,
                               params_ + layout_.at("classifier.b").offset, B, d, C);
    head_probs_.resize(B * C);
    targets_.assign(batch.labels.begin(), batch.labels.end());
    if (!with_loss) std::fill(targets_.begin(), targets_.end(), -1);
    loss.task = cpu::cross_entropy_forward<float>(head_probs_.data(), logits_.data(), targets_.data(), B, C,
                                                  &num_targets_);
  }
  if (parallel_ && parallel_->distributed()) {  // the task loss averages over the global batch
    double sum_and_count[2] = {loss.task, static_cast<double>(num_targets_)};
    parallel_->world->all_reduce_sum(sum_and_count, 2);
    loss.task = sum_and_count[0];
    num_targets_ = static_cast<int64_t>(sum_and_count[1]);
  }
  if (num_targets_ > 0) loss.task /= static_cast<double>(num_targets_);
  loss.num_targets = num_targets_;
  loss.total = loss.task + loss.aux + loss.z;
  return loss;
}

void Model::backward() {
  SMT_CHECK(batch_ != nullptr && last_with_loss_, "backward() needs a forward() with loss first");
  const Batch& batch = *batch_;
  const int64_t B = B_, N = N_, T = B * N;
  const int64_t d = config_.d_model, H = config_.heads, hd = config_.head_dim(), f = config_.expert_hidden;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float task_scale = num_targets_ > 0 ? 1.0f / static_cast<float>(num_targets_) : 0.0f;
  float* g_embedding = grads_ + layout_.at("embedding").offset;

  zero(dx_, T * d);
  zero(d_h_, T * d);
  if (config_.head == "lm") {
    const int64_t V = config_.vocab_size;
    zero(d_logits_, T * V);
    cpu::cross_entropy_backward<float>(d_logits_.data(), head_probs_.data(), targets_.data(), T, V, task_scale);
    cpu::matmul_transposed_backward<float>(d_h_.data(), g_embedding, d_logits_.data(), h_final_.data(),
                                           params_ + layout_.at("embedding").offset, T, d, V);
  } else {
    const int64_t C = config_.num_classes;
    zero(d_logits_, B * C);
    cpu::cross_entropy_backward<float>(d_logits_.data(), head_probs_.data(), targets_.data(), B, C, task_scale);
    zero(d_pooled_, B * d);
    cpu::linear_backward<float>(d_pooled_.data(), grads_ + layout_.at("classifier.w").offset,
                                grads_ + layout_.at("classifier.b").offset, d_logits_.data(), pooled_.data(),
                                params_ + layout_.at("classifier.w").offset, B, d, C);
    cpu::mean_pool_backward<float>(d_h_.data(), d_pooled_.data(), batch.valid.data(), B, N, d);
  }
  cpu::rmsnorm_backward<float>(dx_.data(), grads_ + layout_.at("final_norm").offset, d_h_.data(), x_final_.data(),
                               params_ + layout_.at("final_norm").offset, rstd_final_.data(), T, d);

  for (int l = config_.layers - 1; l >= 0; --l) {
    LayerActs& A = acts_[l];
    const LayerPtrs P = layer_ptrs(params_, l);
    const LayerPtrs G = layer_ptrs(grads_, l);
    const bool moe = ParamLayout::layer_is_moe(config_, l);
    const int64_t E = moe ? config_.experts : 1, k = moe ? config_.top_k : 1;
    const int64_t R = A.plan.num_rows();

    // dx holds dL/dx_{l+1} = dL/dx_mid through the residual; add the feed-forward branch.
    zero(d_rows_out_, R * d);
    zero(d_topk_w_, T * k);
    cpu::unpermute_backward<float>(d_rows_out_.data(), d_topk_w_.data(), dx_.data(), A.rows_out.data(),
                                   A.topk_w.data(), A.plan, d);
    zero(d_rows_, R * d);
    if (!expert_parallel_layer(moe)) {
      ensure_size(d_hidden_, R * f);
      cpu::experts_backward<float>(d_rows_.data(), G.w1, G.b1, G.w2, G.b2, d_hidden_.data(), d_rows_out_.data(),
                                   A.rows.data(), A.hidden_pre.data(), A.hidden.data(), P.w1, P.w2,
                                   A.plan.expert_row_offset.data(), E, d, f);
    } else {  // mirror of the forward: d(rows_out) to the owners, d(rows) back
      const int64_t Re = A.exchange->num_expert_rows(), e0 = parallel_->first_local_expert();
      const int64_t El = parallel_->num_local_experts();
      ensure_size(d_expert_rows_out_, Re * d);
      A.exchange->to_experts(d_rows_out_.data(), d_expert_rows_out_.data(), d);
      zero(d_expert_rows_, Re * d);
      ensure_size(d_hidden_, Re * f);
      cpu::experts_backward<float>(d_expert_rows_.data(), G.w1 + e0 * d * f, G.b1 + e0 * f, G.w2 + e0 * f * d,
                                   G.b2 + e0 * d, d_hidden_.data(), d_expert_rows_out_.data(), A.expert_rows.data(),
                                   A.expert_hidden_pre.data(), A.expert_hidden.data(), P.w1 + e0 * d * f,
                                   P.w2 + e0 * f * d, A.exchange->local_expert_row_offset().data(), El, d, f);
      A.exchange->from_experts(d_expert_rows_.data(), d_rows_.data(), d);
    }
    zero(d_m_, T * d);
    cpu::permute_backward<float>(d_m_.data(), d_rows_.data(), A.plan, d);
    if (moe) {
      const int64_t Tg = A.global.num_tokens_global;
      zero(d_probs_, T * E);
      const double aux_scale = load_balance_scale(aux_coeff_, E, k, Tg);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e)
          d_probs_[t * E + e] = static_cast<float>(aux_scale * A.global.num_routed_global[e]);
      ensure_size(d_lse_, T);
      for (int64_t t = 0; t < T; ++t) d_lse_[t] = static_cast<float>(z_coeff_ * 2.0 * A.router_lse[t] / Tg);
      zero(d_router_logits_, T * E);
      cpu::router_topk_backward<float>(d_router_logits_.data(), d_topk_w_.data(), d_probs_.data(), d_lse_.data(),
                                       A.router_probs.data(), A.topk_idx.data(), A.topk_w.data(), T, E, k);
      cpu::linear_backward<float>(d_m_.data(), G.router, nullptr, d_router_logits_.data(), A.m.data(), P.router, T, d,
                                  E);
    }
    cpu::rmsnorm_backward<float>(dx_.data(), G.ffn_norm, d_m_.data(), A.x_mid.data(), P.ffn_norm, A.rstd2.data(), T,
                                 d);

    // dx now holds dL/dx_mid; the attention branch: x_mid = x_in + o @ wo.
    zero(d_o_, T * d);
    cpu::linear_backward<float>(d_o_.data(), G.wo, nullptr, dx_.data(), A.o.data(), P.wo, T, d, d);
    zero(dq_, T * d);
    zero(dk_, T * d);
    zero(dv_, T * d);
    const BlockMask& mask = block_mask(l, static_cast<int>(N));
    cpu::attention_backward<float>(dq_.data(), dk_.data(), dv_.data(), d_o_.data(), A.o.data(), A.lse.data(),
                                   A.q.data(), A.k.data(), A.v.data(), batch.valid.data(), mask, B, H, hd, scale);
    zero(d_a_, T * d);
    zero(d_tmp_, T * d);
    cpu::rope_backward<float>(d_tmp_.data(), dq_.data(), B, N, H, hd, config_.rope_theta);
    cpu::linear_backward<float>(d_a_.data(), G.wq, nullptr, d_tmp_.data(), A.a.data(), P.wq, T, d, d);
    zero(d_tmp_, T * d);
    cpu::rope_backward<float>(d_tmp_.data(), dk_.data(), B, N, H, hd, config_.rope_theta);
    cpu::linear_backward<float>(d_a_.data(), G.wk, nullptr, d_tmp_.data(), A.a.data(), P.wk, T, d, d);
    cpu::linear_backward<float>(d_a_.data(), G.wv, nullptr, dv_.data(), A.a.data(), P.wv, T, d, d);
    cpu::rmsnorm_backward<float>(dx_.data(), G.attn_norm, d_a_.data(), A.x_in.data(), P.attn_norm, A.rstd1.data(), T,
                                 d);
  }
  cpu::embedding_backward<float>(g_embedding, dx_.data(), batch.tokens.data(), T, d);
}

bool Model::expert_parallel_layer(bool moe) const {
  return moe && parallel_ != nullptr && parallel_->expert_parallel > 1;
}

void Model::route(LayerActs& A, int64_t T, int64_t E, int64_t k, bool moe) {
  std::vector<int64_t> num_routed_local(E, 0);
  for (int64_t a = 0; a < T * k; ++a) {
    const int32_t e = A.topk_idx[a];
    SMT_CHECK(e >= 0 && e < E, "router chose expert ", e, " outside [0, ", E, ")");
    ++num_routed_local[e];
  }
  A.global = global_routing(parallel_ ? parallel_->world.get() : nullptr, num_routed_local, T, k,
                            config_.capacity_factor, moe);
  A.plan = cpu::build_routing_plan(A.topk_idx.data(), T, E, k, A.global.capacity, A.global.num_routed_before.data());
}

float learning_rate_at(const TrainConfig& train, int64_t step) {
  const double lr = train.lr, min_lr = train.lr * train.min_lr_ratio;
  if (train.warmup > 0 && step <= train.warmup) return static_cast<float>(lr * step / train.warmup);
  const double progress =
      static_cast<double>(step - train.warmup) / static_cast<double>(std::max<int64_t>(1, train.steps - train.warmup));
  const double p = std::min(1.0, std::max(0.0, progress));
  return static_cast<float>(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * p)));
}

bool is_sharded_expert_tensor(const ModelConfig& config, const TensorSpec& t) {
  return t.is_expert && !t.shape.empty() && t.shape[0] == config.experts;
}

HeldRange held_range(const ModelConfig& config, const ParallelContext* par, const TensorSpec& t) {
  if (par == nullptr || par->expert_parallel == 1 || !is_sharded_expert_tensor(config, t)) return {t.offset, t.numel};
  const int64_t per_expert = t.numel / t.shape[0];
  return {t.offset + par->first_local_expert() * per_expert, par->num_local_experts() * per_expert};
}

namespace {

HeldRange held_range(const Model& model, const TensorSpec& t) { return held_range(model.config(), model.parallel(), t); }

// Sums the gradients over the ranks that hold the same tensors (one packed all-reduce per group).
void all_reduce_grads(Model& model) {
  const ParallelContext& par = *model.parallel();
  std::vector<float> replicated, experts;
  auto pack = [&](std::vector<float>& buf, bool sharded, bool unpack) {
    size_t pos = 0;
    for (const auto& t : model.layout().tensors()) {
      if (is_sharded_expert_tensor(model.config(), t) != sharded) continue;
      const HeldRange h = held_range(model, t);
      float* g = model.grads() + h.offset;
      if (!unpack) buf.insert(buf.end(), g, g + h.numel);
      else std::copy(buf.begin() + pos, buf.begin() + pos + h.numel, g);
      pos += static_cast<size_t>(h.numel);
    }
  };
  pack(replicated, false, false);
  par.world->all_reduce_sum(replicated.data(), static_cast<int64_t>(replicated.size()));
  pack(replicated, false, true);
  // Expert gradients: over the ranks holding the same experts (all ranks when P = 1).
  Communicator& expert_peers = par.expert_parallel == 1 ? *par.world : *par.expert_data_group;
  if (expert_peers.size() > 1) {
    pack(experts, true, false);
    expert_peers.all_reduce_sum(experts.data(), static_cast<int64_t>(experts.size()));
    pack(experts, true, true);
  }
}

}  // namespace

cpu::AdamWParams adamw_params_at(const TrainConfig& train, int64_t step) {
  cpu::AdamWParams hp;
  hp.lr = learning_rate_at(train, step);
  hp.beta1 = train.beta1;
  hp.beta2 = train.beta2;
  return hp;
}

float clip_scale(const TrainConfig& train, double grad_norm) {
  return train.clip > 0 ? static_cast<float>(std::min(1.0, train.clip / (grad_norm + 1e-6))) : 1.0f;
}

double gradient_norm(Model& model) {
  const ParamLayout& layout = model.layout();
  const ParallelContext* par = model.parallel();
  double sq = 0;
  if (par == nullptr || !par->distributed()) {
    for (const auto& t : layout.tensors()) sq += cpu::sum_squares(model.grads() + t.offset, t.numel);
  } else {
    all_reduce_grads(model);
    // Global norm: replicated tensors once, each expert slice once (summed over the expert group).
    double sq_experts = 0;
    for (const auto& t : layout.tensors()) {
      const HeldRange h = held_range(model, t);
      const double s = cpu::sum_squares(model.grads() + h.offset, h.numel);
      if (is_sharded_expert_tensor(model.config(), t)) sq_experts += s;
      else sq += s;
    }
    if (par->expert_parallel > 1) par->expert_group->all_reduce_sum(&sq_experts, 1);
    sq += sq_experts;
  }
  return std::sqrt(sq);
}

void apply_update(Model& model, const TrainConfig& train, int64_t step, double grad_norm) {
  const float grad_scale = clip_scale(train, grad_norm);
  cpu::AdamWParams hp = adamw_params_at(train, step);
  for (const auto& t : model.layout().tensors()) {
    hp.weight_decay = t.decay ? train.weight_decay : 0.0f;
    const HeldRange h = held_range(model, t);
    cpu::adamw_update(model.params() + h.offset, model.grads() + h.offset, model.adam_m() + h.offset,
                      model.adam_v() + h.offset, h.numel, hp, step, grad_scale);
  }
}

double optimizer_step(Model& model, const TrainConfig& train, int64_t step) {
  const double norm = gradient_norm(model);
  apply_update(model, train, step, norm);
  return norm;
}

void gather_experts(Model& model) {
  const ParallelContext* par = model.parallel();
  if (par == nullptr || par->expert_parallel == 1) return;
  std::vector<float> slice;
  for (const auto& t : model.layout().tensors()) {
    if (!is_sharded_expert_tensor(model.config(), t)) continue;
    const HeldRange h = held_range(model, t);
    for (float* base : {model.params(), model.adam_m(), model.adam_v()}) {
      slice.assign(base + h.offset, base + h.offset + h.numel);
      par->expert_group->all_gather(slice.data(), base + t.offset, h.numel * static_cast<int64_t>(sizeof(float)));
    }
  }
}

}  // namespace smt
