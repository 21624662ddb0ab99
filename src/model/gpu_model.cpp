// The model on one CUDA device (see gpu_model.h); each step mirrors model.cpp.
#ifdef SMT_CUDA
#include "model/gpu_model.h"

#include <algorithm>
#include <cmath>

#include "core/cuda_check.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "kernels/flash_attention.h"
#include "kernels/gpu_attention_pattern.h"

namespace smt {

namespace {

// Grow-only: a buffer keeps its allocation when a later shape needs less (row counts change per layer
// and, with a capacity, per step); every use passes its length explicitly. Freeing would synchronise
// the device.
template <typename T>
void ensure(DeviceBuffer<T>& b, size_t n) {
  if (b.size() < n) b = DeviceBuffer<T>(n);
}
void copy_d2d(float* dst, const float* src, size_t n, cudaStream_t s) {
  if (n > 0) SMT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, s));
}
template <typename T>
void upload(DeviceBuffer<T>& dst, const std::vector<T>& src, cudaStream_t s) {
  ensure(dst, src.size());
  if (!src.empty())
    SMT_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <typename T>
std::vector<T> download(const T* src, size_t n, cudaStream_t s) {
  std::vector<T> out(n);
  if (n > 0) SMT_CUDA_CHECK(cudaMemcpyAsync(out.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost, s));
  SMT_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}
void zero(DeviceBuffer<float>& b, size_t n, cudaStream_t s) {
  ensure(b, n);
  if (n > 0) SMT_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, n * sizeof(float), s));
}

}  // namespace

GpuModel::GpuModel(const ModelConfig& config, float aux_loss_coeff, float z_loss_coeff, uint64_t attention_seed,
                   cudaStream_t stream, gpu::Precision precision)
    : config_(config),
      layout_(config),
      aux_coeff_(aux_loss_coeff),
      z_coeff_(z_loss_coeff),
      attention_seed_(attention_seed),
      stream_(stream),
      precision_(precision),
      // The tensor-core kernels take head dim 64/128 and mask blocks that are multiples of 64.
      use_flash_(precision == gpu::Precision::kBf16 && (config.head_dim() == 64 || config.head_dim() == 128) &&
                 config.block_size % 64 == 0),
      n_(layout_.total()),
      arena_(static_cast<size_t>(4 * layout_.total())) {
  // On the model's stream: a caller's stream may be non-blocking (not ordered after the legacy stream).
  SMT_CUDA_CHECK(cudaMemsetAsync(arena_.data(), 0, arena_.bytes(), stream_));
  if (cublasCreate(&handle_) != CUBLAS_STATUS_SUCCESS) throw Error("cublasCreate failed");
  SMT_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));  // fp32, no TF32: the CPU model's arithmetic
}

GpuModel::~GpuModel() {
  if (handle_) cublasDestroy(handle_);
}

void GpuModel::upload_from(const Model& host) {
  SMT_CHECK(host.layout().total() == n_, "GpuModel::upload_from: layouts differ");
  auto& h = const_cast<Model&>(host);  // Model exposes its arena through non-const accessors
  const float* src[3] = {h.params(), h.adam_m(), h.adam_v()};
  float* dst[3] = {params(), adam_m(), adam_v()};
  for (int i = 0; i < 3; ++i)
    SMT_CUDA_CHECK(cudaMemcpyAsync(dst[i], src[i], n_ * sizeof(float), cudaMemcpyHostToDevice, stream_));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void GpuModel::download_to(Model& host) const {
  SMT_CHECK(host.layout().total() == n_, "GpuModel::download_to: layouts differ");
  const float* base = arena_.data();
  float* dst[3] = {host.params(), host.adam_m(), host.adam_v()};
  const int64_t slot[3] = {0, 2, 3};
  for (int i = 0; i < 3; ++i)
    SMT_CUDA_CHECK(
        cudaMemcpyAsync(dst[i], base + slot[i] * n_, n_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

gpu::GemmOperand GpuModel::w(const std::string& name) {
  if (precision_ == gpu::Precision::kBf16) return params16_.data() + layout_.at(name).offset;
  return p(name);
}

gpu::GemmOperand GpuModel::as_operand(const DeviceBuffer<float>& x32, DeviceBuffer<__nv_bfloat16>& x16, int64_t n) {
  if (precision_ != gpu::Precision::kBf16) return x32.data();
  if (x16.size() < static_cast<size_t>(n)) x16 = DeviceBuffer<__nv_bfloat16>(static_cast<size_t>(n));
  gpu::cast_fp32_to_bf16(x16.data(), x32.data(), n, stream_);
  return x16.data();
}

gpu::GemmOperand GpuModel::saved_operand(const DeviceBuffer<float>& x32, const DeviceBuffer<__nv_bfloat16>& x16) const {
  if (precision_ != gpu::Precision::kBf16) return x32.data();
  return x16.data();
}

std::vector<float> GpuModel::download_grads() const { return download(arena_.data() + n_, n_, stream_); }

void GpuModel::zero_grads() { SMT_CUDA_CHECK(cudaMemsetAsync(grads(), 0, n_ * sizeof(float), stream_)); }

std::vector<float> GpuModel::probs() const {
  return download(head_probs_.data(), static_cast<size_t>(head_rows_ * head_cols_), stream_);
}

std::vector<int32_t> GpuModel::topk_idx(int layer) const {
  SMT_CHECK(layer >= 0 && static_cast<size_t>(layer) < acts_.size(), "topk_idx: no layer ", layer, " in the last forward");
  const int64_t k = ParamLayout::layer_is_moe(config_, layer) ? config_.top_k : 1;
  return download(acts_[layer].topk_idx.data(), static_cast<size_t>(B_ * N_ * k), stream_);
}

const gpu::DeviceBlockMask& GpuModel::mask(int layer, int seq_len) {
  if (mask_seq_len_ != seq_len) {
    masks_.clear();
    const AttnPatternConfig pc = config_.attention_pattern(attention_seed_);  // as Model::block_mask
    // Built on the device by the rule the CPU model uses (bit for bit the same lists); the builder
    // synchronises, so the lists are ready for the model's stream.
    for (int l = 0; l < config_.layers; ++l) masks_.push_back(gpu::build_block_mask_on_device(pc, seq_len, l, stream_));
    mask_seq_len_ = seq_len;
  }
  return masks_[layer];
}

LossParts GpuModel::forward(const Batch& batch, bool with_loss) {
  const int64_t B = batch.batch_size, N = batch.seq_len, T = B * N;
  const int64_t d = config_.d_model, H = config_.heads, hd = config_.head_dim(), f = config_.expert_hidden;
  SMT_CHECK(static_cast<int64_t>(batch.tokens.size()) == T, "batch has ", batch.tokens.size(), " tokens, expected ", T);
  for (int32_t t : batch.tokens) SMT_CHECK(t >= 0 && t < config_.vocab_size, "token id ", t, " outside [0, model.vocab_size = ", config_.vocab_size, ")");
  cudaStream_t s = stream_;
  B_ = B;
  N_ = N;
  last_with_loss_ = with_loss;
  acts_.resize(config_.layers);
  routing_.assign(config_.layers, LayerRouting{});
  exchange_stats_ = ExchangeStats{};
  upload(tokens_, batch.tokens, s);
  upload(valid_, batch.valid, s);
  if (precision_ == gpu::Precision::kBf16) {  // the parameters changed since the last forward (update, upload)
    if (params16_.size() != static_cast<size_t>(n_)) params16_ = DeviceBuffer<__nv_bfloat16>(static_cast<size_t>(n_));
    gpu::cast_fp32_to_bf16(params16_.data(), params(), n_, s);
  }
  mark("fwd.upload_cast");
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  gpu::ensure_rope_table(rope_, N, hd, config_.rope_theta);
  LossParts loss;

  // The residual stream: layer l reads acts_[l].x_in and writes layer l + 1's (the last one x_final_),
  // so no copy carries it from layer to layer.
  for (LayerActs& A : acts_) ensure(A.x_in, T * d);
  ensure(x_final_, T * d);
  auto stream_in = [&](int l) { return l < config_.layers ? acts_[l].x_in.data() : x_final_.data(); };
  DeviceBuffer<float>& tmp = tmp_;  // the fp32 attention path's q/k before rope
  if (!use_flash_) ensure(tmp, T * d);
  zero(psum_, static_cast<int64_t>(config_.layers) * config_.experts, s);  // [layers, E] router probability sums
  ensure(lse_sq_, static_cast<size_t>(config_.layers));                     // [layers] sums of lse^2
  SMT_CUDA_CHECK(cudaMemsetAsync(lse_sq_.data(), 0, config_.layers * sizeof(double), s));  // dense layers: 0
  gpu::embedding_forward(stream_in(0), tokens_.data(), p("embedding"), T, d, s);
  mark("fwd.embedding");
  for (int l = 0; l < config_.layers; ++l) {
    LayerActs& A = acts_[l];
    const std::string pre = "layers." + std::to_string(l) + ".";
    const bool moe = ParamLayout::layer_is_moe(config_, l);
    const int64_t E = moe ? config_.experts : 1, k = moe ? config_.top_k : 1;
    for (auto* b : {&A.x_mid, &A.m}) ensure(*b, T * d);
    // fp32 copies only where something reads them: bf16 GEMMs read a16, flash attention q16/k16/v16.
    if (precision_ != gpu::Precision::kBf16) ensure(A.a, T * d);
    if (!use_flash_)
      for (auto* b : {&A.q, &A.k, &A.v, &A.o}) ensure(*b, T * d);
    ensure(A.rstd1, T);
    ensure(A.rstd2, T);
    ensure(A.lse, B * H * N);

    gpu::GemmOperand a_op = A.a.data();
    if (precision_ == gpu::Precision::kBf16) {  // the norm writes the wq/wk/wv GEMMs' bf16 operand only
      ensure(A.a16, T * d);
      gpu::rmsnorm_forward(nullptr, A.rstd1.data(), A.x_in.data(), p(pre + "attn_norm"), T, d, config_.norm_eps, s,
                           A.a16.data());
      a_op = A.a16.data();
    } else {
      gpu::rmsnorm_forward(A.a.data(), A.rstd1.data(), A.x_in.data(), p(pre + "attn_norm"), T, d, config_.norm_eps, s);
    }
    // With flash attention q, k, v go straight into its bf16 inputs: bf16 GEMM outputs, q and k then rotated in
    // place (in fp32, rounded again), as a bf16 autocast computes them.
    if (use_flash_)
      for (auto* b : {&A.q16, &A.k16, &A.v16, &A.o16}) ensure(*b, T * d);
    if (use_flash_) {
      gpu::linear_forward_bf16(A.q16.data(), a_op, w(pre + "wq"), T, d, d, handle_, s);
      gpu::rope_forward_bf16(A.q16.data(), A.q16.data(), rope_, B, N, H, s);
      gpu::linear_forward_bf16(A.k16.data(), a_op, w(pre + "wk"), T, d, d, handle_, s);
      gpu::rope_forward_bf16(A.k16.data(), A.k16.data(), rope_, B, N, H, s);
      gpu::linear_forward_bf16(A.v16.data(), a_op, w(pre + "wv"), T, d, d, handle_, s);
    } else {
      gpu::linear_forward(tmp.data(), a_op, w(pre + "wq"), nullptr, T, d, d, false, handle_, s);
      gpu::rope_forward(A.q.data(), nullptr, tmp.data(), rope_, B, N, H, s);
      gpu::linear_forward(tmp.data(), a_op, w(pre + "wk"), nullptr, T, d, d, false, handle_, s);
      gpu::rope_forward(A.k.data(), nullptr, tmp.data(), rope_, B, N, H, s);
      gpu::linear_forward(A.v.data(), a_op, w(pre + "wv"), nullptr, T, d, d, false, handle_, s);
    }
    mark("fwd.norm_qkv_rope");
    if (use_flash_) {  // bf16 tensor-core kernel: o comes out in bf16, the wo GEMM's operand as it is
      gpu::flash_attention_forward(A.o16.data(), A.lse.data(), A.q16.data(), A.k16.data(), A.v16.data(), valid_.data(),
                                   mask(l, static_cast<int>(N)), B, H, hd, scale, s);
    } else {
      gpu::attention_forward(A.o.data(), A.lse.data(), A.q.data(), A.k.data(), A.v.data(), valid_.data(),
                             mask(l, static_cast<int>(N)), B, H, hd, scale, s);
    }
    mark("fwd.attention");
    copy_d2d(A.x_mid.data(), A.x_in.data(), T * d, s);
    const gpu::GemmOperand o_op = use_flash_ ? gpu::GemmOperand(A.o16.data()) : as_operand(A.o, A.o16, T * d);
    gpu::linear_forward(A.x_mid.data(), o_op, w(pre + "wo"), nullptr, T, d, d, /*accumulate=*/true, handle_, s);
    mark("fwd.out_proj");

    // kBf16 on one rank's own experts: the rows are gathered straight into the experts' bf16 GEMM input from a
    // bf16 copy of m (no fp32 rows); the router still reads the fp32 m. Expert parallel: fp32 rows are exchanged.
    const bool rows_in_bf16 = uses_bf16_rows(moe);
    if (rows_in_bf16) ensure(A.m16, T * d);
    gpu::rmsnorm_forward(A.m.data(), A.rstd2.data(), A.x_mid.data(), p(pre + "ffn_norm"), T, d, config_.norm_eps, s,
                         rows_in_bf16 ? A.m16.data() : nullptr);
    ensure(A.topk_idx, T * k);
    ensure(A.topk_w, T * k);
    if (moe) {
      ensure(A.router_logits, T * E);
      ensure(A.router_probs, T * E);
      ensure(A.router_lse, T);
      gpu::linear_forward(A.router_logits.data(), A.m.data(), p(pre + "router"), nullptr, T, d, E, false, handle_, s);
      gpu::router_topk_forward(A.router_probs.data(), A.topk_idx.data(), A.topk_w.data(), A.router_lse.data(),
                               A.router_logits.data(), T, E, k, s);
    } else {
      SMT_CUDA_CHECK(cudaMemsetAsync(A.topk_idx.data(), 0, T * k * sizeof(int32_t), s));
      ones_host_.assign(static_cast<size_t>(T * k), 1.0f);  // a member: the async copy's source outlives the call
      upload(A.topk_w, ones_host_, s);
    }
    mark("fwd.norm_router");
    // Counts, then (under several ranks) the global counts and the lower ranks' share, then the rows.
    gpu::count_routing_on_device(A.dplan, A.topk_idx.data(), T, E, k, s);
    A.global = global_routing(host_world(), A.dplan.num_routed_per_expert_host, T, k, config_.capacity_factor, moe);
    gpu::place_routing_on_device(A.dplan, A.topk_idx.data(), A.global.capacity, A.global.num_routed_before.data(), s);
    const int64_t R = A.dplan.num_rows;
    // kBf16 on one rank's own experts the experts' output comes out in bf16 without b2 and the combine adds the
    // bias (no fp32 rows_out); expert parallel: fp32 rows are exchanged.
    if (rows_in_bf16) ensure(A.rows_out16, static_cast<size_t>(std::max<int64_t>(1, R * d)));
    else ensure(A.rows_out, R * d);
    if (rows_in_bf16) {  // at least one element: non-null even when no row is kept
      ensure(A.rows16, static_cast<size_t>(std::max<int64_t>(1, R * d)));
      gpu::permute_forward(A.rows16.data(), A.m16.data(), A.dplan, d, s);
    } else {
      ensure(A.rows, R * d);
      gpu::permute_forward(A.rows.data(), A.m.data(), A.dplan, d, s);
    }
    if (expert_parallel_layer(moe)) {  // dispatch this rank's rows to the experts' owners
      A.exchange = std::make_shared<ExpertExchange>(*parallel_->host->expert_group, *parallel_->expert_group,
                                                    A.dplan.num_tokens_per_expert_host);
      const int64_t Re = A.exchange->num_expert_rows();
      ensure(A.expert_rows, Re * d);
      ensure(A.expert_rows_out, Re * d);
      A.exchange->to_experts(A.rows.data(), A.expert_rows.data(), d);
      exchange_stats_.rows_sent += A.exchange->rows_sent_to_others();
      exchange_stats_.rows_received += A.exchange->rows_received_from_others();
      exchange_stats_.expert_rows += Re;
    } else {
      A.exchange.reset();
    }
    mark("fwd.dispatch");
    const ExpertSide ex = expert_side(A, moe);
    const int64_t e0 = ex.first_expert;
    const gpu::ExpertsBf16Activations* keep = nullptr;
    if (precision_ == gpu::Precision::kBf16) {  // the experts' bf16 activations, kept for the backward (no fp32)
      // At least one element: a rank whose experts get no rows still passes non-null buffers.
      ensure(A.rows16, static_cast<size_t>(std::max<int64_t>(1, ex.num_rows * d)));
      ensure(A.hidden_pre16, static_cast<size_t>(std::max<int64_t>(1, ex.num_rows * f)));
      ensure(A.hidden16, static_cast<size_t>(std::max<int64_t>(1, ex.num_rows * f)));
      A.expert_acts16 = {.rows = A.rows16.data(),
                         .hidden_pre = A.hidden_pre16.data(),
                         .hidden = A.hidden16.data(),
                         .rows_ready = rows_in_bf16};
      keep = &A.expert_acts16;
    } else {
      ensure(A.hidden_pre, ex.num_rows * f);
      ensure(A.hidden, ex.num_rows * f);
    }
    const float* b2 = p(pre + "experts.b2");
    gpu::experts_forward(rows_in_bf16 ? gpu::GemmOutput(A.rows_out16.data()) : gpu::GemmOutput(ex.rows_out),
                         A.hidden_pre.data(), A.hidden.data(), rows_in_bf16 ? nullptr : ex.rows,
                         w(pre + "experts.w1").offset_by(e0 * d * f), p(pre + "experts.b1") + e0 * f,
                         w(pre + "experts.w2").offset_by(e0 * f * d), rows_in_bf16 ? nullptr : b2 + e0 * d,
                         ex.row_offset, ex.num_experts, d, f, handle_, s, precision_, keep);
    mark("fwd.experts");
    if (A.exchange) A.exchange->from_experts(A.expert_rows_out.data(), A.rows_out.data(), d);  // combine
    if (rows_in_bf16)
      gpu::unpermute_forward(stream_in(l + 1), A.rows_out16.data(), A.topk_w.data(), A.dplan, d, s, A.x_mid.data(), b2,
                             A.topk_idx.data());
    else
      gpu::unpermute_forward(stream_in(l + 1), A.rows_out.data(), A.topk_w.data(), A.dplan, d, s, A.x_mid.data());
    mark("fwd.combine");

    routing_[l] = routing_stats(A.global, moe);
    if (moe) {  // the router losses' sums, read back once after the last layer
      gpu::add_column_sums(psum_.data() + l * config_.experts, A.router_probs.data(), T, E, s);
      gpu::sum_squares_on_device(lse_sq_.data() + l, A.router_lse.data(), T, s);
      mark("fwd.router_sums");
    }
  }
  {  // One synchronisation for every layer's router losses (in layer order, as the CPU model).
    const int64_t L = config_.layers, Ex = config_.experts;
    std::vector<float> p_sums(static_cast<size_t>(L * Ex));
    std::vector<double> lse_sq(static_cast<size_t>(L));
    SMT_CUDA_CHECK(cudaMemcpyAsync(p_sums.data(), psum_.data(), p_sums.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    SMT_CUDA_CHECK(cudaMemcpyAsync(lse_sq.data(), lse_sq_.data(), lse_sq.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    SMT_CUDA_CHECK(cudaStreamSynchronize(s));
    for (int l = 0; l < config_.layers; ++l) {
      if (!ParamLayout::layer_is_moe(config_, l)) continue;
      // [E] probabilities per expert, then the sum of lse^2
      std::vector<double> sums(p_sums.begin() + l * Ex, p_sums.begin() + (l + 1) * Ex);
      sums.push_back(lse_sq[static_cast<size_t>(l)]);
      const RouterLosses rl =
          router_losses(host_world(), std::move(sums), acts_[l].global, config_.top_k, aux_coeff_, z_coeff_);
      loss.aux += rl.aux;
      loss.z += rl.z;
    }
    mark("fwd.router_losses");
  }

  ensure(rstd_final_, T);
  // The LM head's bf16 GEMM reads only the bf16 copy of the final norm; the classifier pools fp32.
  const bool head_reads_bf16 = config_.head == "lm" && precision_ == gpu::Precision::kBf16;
  if (head_reads_bf16) {
    ensure(h_final16_, T * d);
    gpu::rmsnorm_forward(nullptr, rstd_final_.data(), x_final_.data(), p("final_norm"), T, d, config_.norm_eps, s,
                         h_final16_.data());
  } else {
    ensure(h_final_, T * d);
    gpu::rmsnorm_forward(h_final_.data(), rstd_final_.data(), x_final_.data(), p("final_norm"), T, d, config_.norm_eps,
                         s);
  }
  if (config_.head == "lm") {
    const int64_t V = config_.vocab_size;
    head_rows_ = T;
    head_cols_ = V;
    ensure(logits_, T * V);
    ensure(head_probs_, T * V);
    const gpu::GemmOperand h_op =
        head_reads_bf16 ? gpu::GemmOperand(h_final16_.data()) : gpu::GemmOperand(h_final_.data());
    gpu::matmul_transposed_forward(logits_.data(), h_op, w("embedding"), T, d, V, handle_, s);
    no_targets_host_.assign(static_cast<size_t>(T), -1);
    upload(targets_, with_loss ? batch.lm_targets : no_targets_host_, s);
    loss.task = gpu::cross_entropy_forward(head_probs_.data(), logits_.data(), targets_.data(), T, V, &num_targets_, s);
  } else {
    const int64_t C = config_.num_classes;
    head_rows_ = B;
    head_cols_ = C;
    ensure(pooled_, B * d);
    ensure(logits_, B * C);
    ensure(head_probs_, B * C);
    gpu::mean_pool_forward(pooled_.data(), h_final_.data(), valid_.data(), B, N, d, s);
    gpu::linear_forward(logits_.data(), pooled_.data(), p("classifier.w"), p("classifier.b"), B, d, C, false, handle_, s);
    no_targets_host_.assign(static_cast<size_t>(B), -1);
    upload(targets_, with_loss ? batch.labels : no_targets_host_, s);
    loss.task = gpu::cross_entropy_forward(head_probs_.data(), logits_.data(), targets_.data(), B, C, &num_targets_, s);
  }
  mark("fwd.head_loss");
  if (Communicator* world = host_world(); world != nullptr && world->size() > 1) {  // over the global batch
    double sum_and_count[2] = {loss.task, static_cast<double>(num_targets_)};
    world->all_reduce_sum(sum_and_count, 2);
    loss.task = sum_and_count[0];
    num_targets_ = static_cast<int64_t>(sum_and_count[1]);
  }
  if (num_targets_ > 0) loss.task /= static_cast<double>(num_targets_);
  loss.num_targets = num_targets_;
  loss.total = loss.task + loss.aux + loss.z;
  return loss;
}

void GpuModel::backward() {
  SMT_CHECK(last_with_loss_ && !acts_.empty(), "backward() needs a forward() with loss first");
  const int64_t B = B_, N = N_, T = B * N;
  const int64_t d = config_.d_model, H = config_.heads, hd = config_.head_dim(), f = config_.expert_hidden;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float task_scale = num_targets_ > 0 ? 1.0f / static_cast<float>(num_targets_) : 0.0f;
  cudaStream_t s = stream_;
  // Scratch kept between steps (resized only when the shapes change).
  auto& [dx, d_h, d_logits, d_tmp, d_a, dq, dk, dv, d_o, d_m, d_rows, d_rows_out, d_hidden, d_topk_w, d_expert_rows,
         d_expert_rows_out] = scratch_;
  zero(dx, T * d, s);
  zero(d_h, T * d, s);
  zero(d_logits, head_rows_ * head_cols_, s);
  gpu::cross_entropy_backward(d_logits.data(), head_probs_.data(), targets_.data(), head_rows_, head_cols_, task_scale, s);
  if (config_.head == "lm") {
    gpu::matmul_transposed_backward(d_h.data(), g("embedding"), d_logits.data(), saved_operand(h_final_, h_final16_),
                                    w("embedding"), T, d,
                                    config_.vocab_size, handle_, s);
  } else {
    const int64_t C = config_.num_classes;
    DeviceBuffer<float>& d_pooled = d_pooled_;
    zero(d_pooled, B * d, s);
    gpu::linear_backward(d_pooled.data(), g("classifier.w"), g("classifier.b"), d_logits.data(), pooled_.data(),
                         p("classifier.w"), B, d, C, handle_, s);
    gpu::mean_pool_backward(d_h.data(), d_pooled.data(), valid_.data(), B, N, d, s);
  }
  gpu::rmsnorm_backward(dx.data(), g("final_norm"), d_h.data(), x_final_.data(), p("final_norm"), rstd_final_.data(), T,
                        d, s);
  mark("bwd.head");

  for (int l = config_.layers - 1; l >= 0; --l) {
    LayerActs& A = acts_[l];
    const std::string pre = "layers." + std::to_string(l) + ".";
    const bool moe = ParamLayout::layer_is_moe(config_, l);
    const int64_t E = moe ? config_.experts : 1, k = moe ? config_.top_k : 1;
    const int64_t R = A.dplan.num_rows;
    const bool bf16 = precision_ == gpu::Precision::kBf16;
    const bool rows_in_bf16 = uses_bf16_rows(moe);  // as in the forward: bf16 rows and combine
    const float* b2 = p(pre + "experts.b2");
    zero(d_topk_w, T * k, s);
    // d(rows_out) and d(rows) are overwritten: every row belongs to one kept assignment.
    if (rows_in_bf16) {
      ensure(d_rows_out16_, static_cast<size_t>(std::max<int64_t>(1, R * d)));
      gpu::unpermute_backward(d_rows_out16_.data(), d_topk_w.data(), dx.data(), A.rows_out16.data(), A.topk_w.data(),
                              A.dplan, d, s, b2, A.topk_idx.data());
    } else {
      ensure(d_rows_out, R * d);
      gpu::unpermute_backward(d_rows_out.data(), d_topk_w.data(), dx.data(), A.rows_out.data(), A.topk_w.data(),
                              A.dplan, d, s, /*accumulate_rows=*/false);
    }
    mark("bwd.combine");
    // The experts' side mirrors the forward: d(rows_out) to the owners, d(rows) back.
    const ExpertSide ex = expert_side(A, moe);
    const int64_t e0 = ex.first_expert;
    gpu::GemmOperand d_ex_out = d_rows_out.data();
    gpu::GemmOutput d_ex_in = nullptr;
    if (rows_in_bf16) {
      ensure(d_rows16_, static_cast<size_t>(std::max<int64_t>(1, R * d)));
      d_ex_out = d_rows_out16_.data();
      d_ex_in = d_rows16_.data();
    } else if (A.exchange) {
      ensure(d_expert_rows_out, ex.num_rows * d);
      A.exchange->to_experts(d_rows_out.data(), d_expert_rows_out.data(), d);
      d_ex_out = d_expert_rows_out.data();
      ensure(d_expert_rows, ex.num_rows * d);
      d_ex_in = d_expert_rows.data();
    } else {
      ensure(d_rows, R * d);
      d_ex_in = d_rows.data();
    }
    if (!bf16) ensure(d_hidden, ex.num_rows * f);  // the fp32 dhidden; kBf16 keeps a bf16 one inside the call
    gpu::experts_backward(d_ex_in, g(pre + "experts.w1") + e0 * d * f, g(pre + "experts.b1") + e0 * f,
                          g(pre + "experts.w2") + e0 * f * d, g(pre + "experts.b2") + e0 * d,
                          bf16 ? nullptr : d_hidden.data(), d_ex_out, ex.rows, A.hidden_pre.data(), A.hidden.data(),
                          w(pre + "experts.w1").offset_by(e0 * d * f), p(pre + "experts.b1") + e0 * f,
                          w(pre + "experts.w2").offset_by(e0 * f * d), ex.row_offset, ex.num_experts, d, f, handle_, s,
                          precision_, bf16 ? &A.expert_acts16 : nullptr, /*drows_accumulate=*/false);
    mark("bwd.experts");
    ensure(d_m, T * d);  // overwritten for every token; the router's dx is added after
    if (rows_in_bf16) {
      gpu::permute_backward(d_m.data(), d_rows16_.data(), A.dplan, d, s, /*accumulate=*/false);
    } else {
      if (A.exchange) {
        ensure(d_rows, R * d);
        A.exchange->from_experts(d_expert_rows.data(), d_rows.data(), d);
      }
      gpu::permute_backward(d_m.data(), d_rows.data(), A.dplan, d, s, /*accumulate=*/false);
    }
    mark("bwd.dispatch");
    if (moe) {
      // d aux / d probs[t, e] = aux_scale * routed[e]; d z / d lse[t] = z * 2 lse[t] / Tg (global batch).
      const int64_t Tg = A.global.num_tokens_global;
      DeviceBuffer<float>&d_probs = d_probs_, &d_lse = d_lse_, &d_router_logits = d_router_logits_;
      ensure(d_probs, T * E);
      ensure(d_lse, T);
      gpu::router_loss_grads(d_probs.data(), d_lse.data(), A.router_lse.data(), A.global.num_routed_global,
                             load_balance_scale(aux_coeff_, E, k, Tg), static_cast<double>(z_coeff_), T, Tg, E, s);
      zero(d_router_logits, T * E, s);
      gpu::router_topk_backward(d_router_logits.data(), d_topk_w.data(), d_probs.data(), d_lse.data(),
                                A.router_probs.data(), A.topk_idx.data(), A.topk_w.data(), T, E, k, s);
      gpu::linear_backward(d_m.data(), g(pre + "router"), nullptr, d_router_logits.data(), A.m.data(), p(pre + "router"),
                           T, d, E, handle_, s);
    }
    gpu::rmsnorm_backward(dx.data(), g(pre + "ffn_norm"), d_m.data(), A.x_mid.data(), p(pre + "ffn_norm"),
                          A.rstd2.data(), T, d, s);
    mark("bwd.router_norm");

    if (use_flash_) {
      // Every gradient that only feeds a bf16 kernel is produced in bf16: d_o (flash's dout) by the wo
      // GEMM, dv by flash, rope's dq/dk by rope; the fp32 ones are dx, d_a and the accumulators dq/dk.
      for (auto* b : {&dx16_, &d_o16_, &dv16_, &d_tmp16_}) ensure(*b, T * d);
      gpu::cast_fp32_to_bf16(dx16_.data(), dx.data(), T * d, s);
      gpu::LinearGradsBf16 wo_grads;
      wo_grads.dx_bf16 = d_o16_.data();
      wo_grads.dw = g(pre + "wo");
      gpu::linear_backward_bf16(wo_grads, dx16_.data(), A.o16.data(), w(pre + "wo"), T, d, d, handle_, s);
      mark("bwd.out_proj");
      zero(dq, T * d, s);
      zero(dk, T * d, s);
      gpu::FlashAttentionGrads fg;
      fg.dq_acc = dq.data();
      fg.dk_acc = dk.data();
      fg.dv = dv16_.data();
      gpu::flash_attention_backward(fg, d_o16_.data(), A.o16.data(), A.lse.data(), A.q16.data(), A.k16.data(),
                                    A.v16.data(), valid_.data(), mask(l, static_cast<int>(N)), B, H, hd, scale,
                                    flash_dq_mode_, s);
      mark("bwd.attention");
      ensure(d_a, T * d);  // overwritten by wq's dx GEMM, then accumulated by wk's and wv's
      const gpu::GemmOperand a_op = A.a16.data();
      auto qkv_backward = [&](__nv_bfloat16* dy16, const char* weight, bool first) {
        gpu::LinearGradsBf16 lg;
        lg.dx = d_a.data();
        lg.dw = g(pre + weight);
        lg.overwrite_dx = first;
        gpu::linear_backward_bf16(lg, dy16, a_op, w(pre + weight), T, d, d, handle_, s);
      };
      gpu::rope_backward(nullptr, dq.data(), rope_, B, N, H, s, d_tmp16_.data());
      qkv_backward(d_tmp16_.data(), "wq", /*first=*/true);
      gpu::rope_backward(nullptr, dk.data(), rope_, B, N, H, s, d_tmp16_.data());  // after wq's GEMMs read it
      qkv_backward(d_tmp16_.data(), "wk", false);
      qkv_backward(dv16_.data(), "wv", false);
    } else {
      zero(d_o, T * d, s);
      gpu::linear_backward(d_o.data(), g(pre + "wo"), nullptr, dx.data(), saved_operand(A.o, A.o16), w(pre + "wo"), T,
                           d, d, handle_, s);
      mark("bwd.out_proj");
      zero(dq, T * d, s);
      zero(dk, T * d, s);
      zero(dv, T * d, s);
      gpu::attention_backward(dq.data(), dk.data(), dv.data(), d_o.data(), A.o.data(), A.lse.data(), A.q.data(),
                              A.k.data(), A.v.data(), valid_.data(), mask(l, static_cast<int>(N)), B, H, hd, scale, s);
      mark("bwd.attention");
      zero(d_a, T * d, s);
      zero(d_tmp, T * d, s);
      gpu::rope_backward(d_tmp.data(), dq.data(), rope_, B, N, H, s);
      const gpu::GemmOperand a_op = saved_operand(A.a, A.a16);
      gpu::linear_backward(d_a.data(), g(pre + "wq"), nullptr, d_tmp.data(), a_op, w(pre + "wq"), T, d, d, handle_, s);
      zero(d_tmp, T * d, s);
      gpu::rope_backward(d_tmp.data(), dk.data(), rope_, B, N, H, s);
      gpu::linear_backward(d_a.data(), g(pre + "wk"), nullptr, d_tmp.data(), a_op, w(pre + "wk"), T, d, d, handle_, s);
      gpu::linear_backward(d_a.data(), g(pre + "wv"), nullptr, dv.data(), a_op, w(pre + "wv"), T, d, d, handle_, s);
    }
    gpu::rmsnorm_backward(dx.data(), g(pre + "attn_norm"), d_a.data(), A.x_in.data(), p(pre + "attn_norm"),
                          A.rstd1.data(), T, d, s);
    mark("bwd.rope_qkv_norm");
  }
  gpu::embedding_backward(g("embedding"), dx.data(), tokens_.data(), T, d, s);
  mark("bwd.embedding");
}

bool GpuModel::expert_parallel_layer(bool moe) const {
  return moe && parallel_ != nullptr && parallel_->host->expert_parallel > 1;
}

GpuModel::ExpertSide GpuModel::expert_side(LayerActs& A, bool moe) {
  if (!A.exchange) {
    return {A.dplan.num_rows, moe ? config_.experts : 1, 0, A.dplan.expert_row_offset_host.data(), A.rows.data(),
            A.rows_out.data()};
  }
  const ParallelContext& par = *parallel_->host;
  return {A.exchange->num_expert_rows(), par.num_local_experts(), par.first_local_expert(),
          A.exchange->local_expert_row_offset().data(), A.expert_rows.data(), A.expert_rows_out.data()};
}

double gradient_norm(GpuModel& model) {
  const DeviceParallelContext* par = model.parallel();
  cudaStream_t s = model.stream();
  if (par == nullptr || !par->host->distributed()) {
    // The gradients are one contiguous range of the arena: one deterministic reduction over all of it.
    const double norm = std::sqrt(gpu::sum_squares(model.grads(), model.layout().total(), s));
    model.mark("opt.grad_norm");
    return norm;
  }
  // Pack what this rank holds, replicated tensors first, then expert slices; sum each part over the
  // ranks holding the same tensors (one device all-reduce per part); unpack; the norm counts every
  // replicated element once and every expert slice once (its squares summed over the expert group).
  const ModelConfig& config = model.config();
  const ParallelContext& host = *par->host;
  std::vector<HeldRange> ranges[2];  // [0] replicated, [1] sharded expert tensors
  int64_t count[2] = {0, 0};
  for (const auto& t : model.layout().tensors()) {
    const int part = is_sharded_expert_tensor(config, t) ? 1 : 0;
    ranges[part].push_back(held_range(config, &host, t));
    count[part] += ranges[part].back().numel;
  }
  ensure(model.grad_pack_, static_cast<size_t>(count[0] + count[1]));
  float* pack[2] = {model.grad_pack_.data(), model.grad_pack_.data() + count[0]};
  auto move = [&](int part, bool to_pack) {
    int64_t pos = 0;
    for (const HeldRange& h : ranges[part]) {
      float* g = model.grads() + h.offset;
      copy_d2d(to_pack ? pack[part] + pos : g, to_pack ? g : pack[part] + pos, static_cast<size_t>(h.numel), s);
      pos += h.numel;
    }
  };
  Communicator* peers[2] = {par->world.get(),
                            host.expert_parallel == 1 ? par->world.get() : par->expert_data_group.get()};
  double sq[2] = {0, 0};
  for (int part = 0; part < 2; ++part) {
    if (count[part] == 0) continue;
    move(part, /*to_pack=*/true);
    if (peers[part]->size() > 1) peers[part]->all_reduce_sum(pack[part], count[part]);
    move(part, /*to_pack=*/false);
    sq[part] = gpu::sum_squares(pack[part], count[part], s);  // synchronises
  }
  if (host.expert_parallel > 1) host.expert_group->all_reduce_sum(&sq[1], 1);
  model.mark("opt.grad_norm");
  return std::sqrt(sq[0] + sq[1]);
}

void apply_update(GpuModel& model, const TrainConfig& train, int64_t step, double grad_norm) {
  cudaStream_t s = model.stream();
  const float grad_scale = clip_scale(train, grad_norm);
  cpu::AdamWParams hp = adamw_params_at(train, step);
  const ParallelContext* host = model.parallel() != nullptr ? model.parallel()->host : nullptr;
  for (const auto& t : model.layout().tensors()) {
    hp.weight_decay = t.decay ? train.weight_decay : 0.0f;
    const HeldRange h = held_range(model.config(), host, t);
    gpu::adamw_update(model.params() + h.offset, model.grads() + h.offset, model.adam_m() + h.offset,
                      model.adam_v() + h.offset, h.numel, hp, step, grad_scale, s);
  }
  model.mark("opt.adamw");
  SMT_CUDA_CHECK(cudaStreamSynchronize(s));
}

double optimizer_step(GpuModel& model, const TrainConfig& train, int64_t step) {
  const double norm = gradient_norm(model);
  apply_update(model, train, step, norm);
  return norm;
}

}  // namespace smt
#endif  // SMT_CUDA
