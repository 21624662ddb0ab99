// `smt bench moe --device cpu|cuda`: benchmark B2 of BENCHMARKS.md, one whole MoE layer forward and
// forward+backward: router GEMM (no bias), router softmax + top-k, the routing plan (on the GPU built on the
// device with one synchronisation for the per-expert counts, as the model does; timed as part of the layer),
// token permutation, the experts' FFN (grouped GEMMs, GELU, no biases), weighted unpermutation, and every
// backward piece down to the input and router weight gradients. Weight gradients are zeroed before each timed repetition (an optimizer's
// zero_grad, not layer work); activation gradients are zeroed inside it. GPU: CUDA events on one stream,
// median of --repeat after --warmup. Expert TFLOP/s are counted as bench/torch_moe.py (and BENCHMARKS.md)
// count them: 3 * (k*T * 2 * 2*d*f), forward + backward of the two expert GEMMs. Everything printed is measured.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "io/json.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "kernels/gpu_ops.h"
#endif

namespace po = boost::program_options;

namespace smt {

namespace {

struct Shape {
  int64_t T, d, f, E, k;
};

struct Timing {
  double fwd_ms = 0, fwdbwd_ms = 0;
  int64_t rows = 0;
  std::string backend = "-";
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The layer's inputs and weights, the same on both devices for a seed: x, dy ~ N(0, 1); Wr, W1 scaled by
// d^-1/2 and W2 by f^-1/2 (as the PyTorch script).
struct LayerData {
  std::vector<float> x, dy, wr, w1, w2;
  LayerData(const Shape& s, uint64_t seed) : x(s.T * s.d), dy(s.T * s.d), wr(s.d * s.E), w1(s.E * s.d * s.f),
                                             w2(s.E * s.f * s.d) {
    Rng rng(seed, 17);
    auto fill = [&](std::vector<float>& v, double scale) {
      for (auto& e : v) e = static_cast<float>(scale * rng.normal());
    };
    fill(x, 1.0);
    fill(dy, 1.0);
    fill(wr, 1.0 / std::sqrt(static_cast<double>(s.d)));
    fill(w1, 1.0 / std::sqrt(static_cast<double>(s.d)));
    fill(w2, 1.0 / std::sqrt(static_cast<double>(s.f)));
  }
};

Timing time_cpu(const Shape& s, const LayerData& in, int warmup, int repeat) {
  const int64_t T = s.T, d = s.d, f = s.f, E = s.E, k = s.k;
  std::vector<float> logits(T * E), probs(T * E), topk_w(T * k), y(T * d);
  std::vector<int32_t> topk_idx(T * k);
  std::vector<float> dx(T * d), dwr(d * E), dw1(E * d * f), dw2(E * f * d), dtopk(T * k), dlogits(T * E);
  std::vector<double> tf, tfb;
  int64_t rows = 0;
  for (int it = 0; it < warmup + repeat; ++it) {
    std::fill(dwr.begin(), dwr.end(), 0.0f);
    std::fill(dw1.begin(), dw1.end(), 0.0f);
    std::fill(dw2.begin(), dw2.end(), 0.0f);
    Timer t;
    cpu::linear_forward<float>(logits.data(), in.x.data(), in.wr.data(), nullptr, T, d, E);
    cpu::router_topk_forward<float>(probs.data(), topk_idx.data(), topk_w.data(), nullptr, logits.data(), T, E, k);
    const cpu::RoutingPlan plan = cpu::build_routing_plan(topk_idx.data(), T, E, k, 0);
    const int64_t R = plan.num_rows();
    std::vector<float> xr(R * d), hp(R * f), h(R * f), out(R * d);
    cpu::permute_forward<float>(xr.data(), in.x.data(), plan, d);
    cpu::experts_forward<float>(out.data(), hp.data(), h.data(), xr.data(), in.w1.data(), nullptr, in.w2.data(),
                                nullptr, plan.expert_row_offset.data(), E, d, f);
    std::fill(y.begin(), y.end(), 0.0f);
    cpu::unpermute_forward<float>(y.data(), out.data(), topk_w.data(), plan, d);
    const double fwd = t.seconds();
    std::vector<float> dout(R * d, 0.0f), dxr(R * d, 0.0f), scratch(R * f);
    std::fill(dtopk.begin(), dtopk.end(), 0.0f);
    std::fill(dlogits.begin(), dlogits.end(), 0.0f);
    std::fill(dx.begin(), dx.end(), 0.0f);
    cpu::unpermute_backward<float>(dout.data(), dtopk.data(), in.dy.data(), out.data(), topk_w.data(), plan, d);
    cpu::experts_backward<float>(dxr.data(), dw1.data(), nullptr, dw2.data(), nullptr, scratch.data(), dout.data(),
                                 xr.data(), hp.data(), h.data(), in.w1.data(), in.w2.data(),
                                 plan.expert_row_offset.data(), E, d, f);
    cpu::permute_backward<float>(dx.data(), dxr.data(), plan, d);
    cpu::router_topk_backward<float>(dlogits.data(), dtopk.data(), nullptr, nullptr, probs.data(), topk_idx.data(),
                                     topk_w.data(), T, E, k);
    cpu::linear_backward<float>(dx.data(), dwr.data(), nullptr, dlogits.data(), in.x.data(), in.wr.data(), T, d, E);
    const double total = t.seconds();
    if (it >= warmup) tf.push_back(1e3 * fwd), tfb.push_back(1e3 * total);
    rows = R;
  }
  for (float v : dx) SMT_CHECK(std::isfinite(v), "bench moe: non-finite input gradient");
  Timing r;
  r.fwd_ms = median(tf);
  r.fwdbwd_ms = median(tfb);
  r.rows = rows;
  return r;
}

#ifdef SMT_CUDA
template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& v) {
  return copy_to_device(v);
}

Timing time_cuda(const Shape& s, const LayerData& in, gpu::Precision precision, int warmup, int repeat) {
  const int64_t T = s.T, d = s.d, f = s.f, E = s.E, k = s.k;
  const bool bf16 = precision == gpu::Precision::kBf16;
  cudaStream_t st = nullptr;
  cublasHandle_t handle = nullptr;
  retain_stream_ordered_memory();  // the layer's temporaries are not re-mapped after every synchronisation
  SMT_CUDA_CHECK(cudaStreamCreate(&st));  // blocking stream: orders with the plan's blocking uploads
  SMT_CUBLAS_CHECK(cublasCreate(&handle));
  SMT_CUBLAS_CHECK(cublasSetStream(handle, st));
  DeviceBuffer<float> x = upload(in.x), dy = upload(in.dy), wr = upload(in.wr), w1 = upload(in.w1), w2 = upload(in.w2);
  DeviceBuffer<float> logits(T * E), probs(T * E), topk_w(T * k), y(T * d), dx(T * d), dwr(d * E), dw1(E * d * f),
      dw2(E * f * d), dtopk(T * k), dlogits(T * E);
  DeviceBuffer<int32_t> topk_idx(T * k);
  // Dropless top-k: every assignment is a row, R = T * k whatever the routing.
  const int64_t R = T * k;
  // fp32: rows, hidden_pre, hidden, out, their gradients and the fp32 dhidden (scratch). bf16 as the model runs
  // it on one rank: x rounded once (router GEMM and expert rows), the rows permuted straight from that bf16
  // copy, the experts' activations, output and the rows' gradients in bf16 only.
  const int64_t Rf32 = bf16 ? 0 : R, R16 = bf16 ? R : 0;
  DeviceBuffer<float> xr(Rf32 * d), hp(Rf32 * f), h(Rf32 * f), out(Rf32 * d), dout(Rf32 * d), dxr(Rf32 * d),
      scratch(Rf32 * f);
  DeviceBuffer<__nv_bfloat16> x_bf16(bf16 ? T * d : 0), wr_bf16(bf16 ? d * E : 0), w1_bf16(bf16 ? E * d * f : 0),
      w2_bf16(bf16 ? E * f * d : 0), xr_bf16(R16 * d), hp_bf16(R16 * f), h_bf16(R16 * f), out_bf16(R16 * d),
      dout_bf16(R16 * d), dxr_bf16(R16 * d);
  const gpu::ExpertsBf16Activations kept_storage{
      .rows = xr_bf16.data(), .hidden_pre = hp_bf16.data(), .hidden = h_bf16.data(), .rows_ready = true};
  const gpu::ExpertsBf16Activations* kept = bf16 ? &kept_storage : nullptr;
  gpu::DeviceRoutingPlan dplan;  // its buffers are reused between repetitions, as the model's are
  cudaEvent_t e0, e1, e2;
  SMT_CUDA_CHECK(cudaEventCreate(&e0));
  SMT_CUDA_CHECK(cudaEventCreate(&e1));
  SMT_CUDA_CHECK(cudaEventCreate(&e2));
  auto zero = [&](DeviceBuffer<float>& b) { SMT_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, b.bytes(), st)); };
  std::vector<double> tf, tfb;
  for (int it = 0; it < warmup + repeat; ++it) {
    zero(dwr);
    zero(dw1);
    zero(dw2);
    SMT_CUDA_CHECK(cudaEventRecord(e0, st));
    // ---- forward ----
    // bf16: the weights rounded once per repetition (a training step rounds its fp32 master weights once for
    // its forward and backward) and x once for the router GEMM and its backward.
    gpu::GemmOperand xa = x.data(), wra = wr.data(), w1a = w1.data(), w2a = w2.data();
    if (bf16) {
      gpu::cast_fp32_to_bf16(x_bf16.data(), x.data(), T * d, st);
      gpu::cast_fp32_to_bf16(wr_bf16.data(), wr.data(), d * E, st);
      gpu::cast_fp32_to_bf16(w1_bf16.data(), w1.data(), E * d * f, st);
      gpu::cast_fp32_to_bf16(w2_bf16.data(), w2.data(), E * f * d, st);
      xa = x_bf16.data();
      wra = wr_bf16.data();
      w1a = w1_bf16.data();
      w2a = w2_bf16.data();
    }
    gpu::linear_forward(logits.data(), xa, wra, nullptr, T, d, E, false, handle, st);
    gpu::router_topk_forward(probs.data(), topk_idx.data(), topk_w.data(), nullptr, logits.data(), T, E, k, st);
    gpu::build_routing_plan_on_device(dplan, topk_idx.data(), T, E, k, /*capacity=*/0, st);  // syncs once
    SMT_CHECK(dplan.num_rows == R, "bench moe: dropless plan with ", dplan.num_rows, " rows, expected ", R);
    const int64_t* offsets = dplan.expert_row_offset_host.data();
    if (bf16) gpu::permute_forward(xr_bf16.data(), x_bf16.data(), dplan, d, st);
    else gpu::permute_forward(xr.data(), x.data(), dplan, d, st);
    const gpu::GemmOutput out_dst = bf16 ? gpu::GemmOutput(out_bf16.data()) : gpu::GemmOutput(out.data());
    gpu::experts_forward(out_dst, hp.data(), h.data(), xr.data(), w1a, nullptr, w2a, nullptr, offsets, E, d, f, handle,
                         st, precision, kept);
    zero(y);
    if (bf16) gpu::unpermute_forward(y.data(), out_bf16.data(), topk_w.data(), dplan, d, st, nullptr, nullptr, nullptr);
    else gpu::unpermute_forward(y.data(), out.data(), topk_w.data(), dplan, d, st);
    SMT_CUDA_CHECK(cudaEventRecord(e1, st));
    // ---- backward ----
    zero(dtopk);
    zero(dlogits);
    // Overwritten, not accumulated: the rows' gradients (every row has one assignment) and dx.
    if (bf16) {
      gpu::unpermute_backward(dout_bf16.data(), dtopk.data(), dy.data(), out_bf16.data(), topk_w.data(), dplan, d, st,
                              nullptr, nullptr);
      gpu::experts_backward(dxr_bf16.data(), dw1.data(), nullptr, dw2.data(), nullptr, nullptr, dout_bf16.data(),
                            nullptr, nullptr, nullptr, w1a, nullptr, w2a, offsets, E, d, f, handle, st, precision, kept,
                            /*drows_accumulate=*/false);
      gpu::permute_backward(dx.data(), dxr_bf16.data(), dplan, d, st, /*accumulate=*/false);
    } else {
      gpu::unpermute_backward(dout.data(), dtopk.data(), dy.data(), out.data(), topk_w.data(), dplan, d, st,
                              /*accumulate_rows=*/false);
      gpu::experts_backward(dxr.data(), dw1.data(), nullptr, dw2.data(), nullptr, scratch.data(), dout.data(),
                            xr.data(), hp.data(), h.data(), w1a, nullptr, w2a, offsets, E, d, f, handle, st, precision,
                            kept, /*drows_accumulate=*/false);
      gpu::permute_backward(dx.data(), dxr.data(), dplan, d, st, /*accumulate=*/false);
    }
    gpu::router_topk_backward(dlogits.data(), dtopk.data(), nullptr, nullptr, probs.data(), topk_idx.data(),
                              topk_w.data(), T, E, k, st);
    gpu::linear_backward(dx.data(), dwr.data(), nullptr, dlogits.data(), xa, wra, T, d, E, handle, st);
    SMT_CUDA_CHECK(cudaEventRecord(e2, st));
    SMT_CUDA_CHECK(cudaEventSynchronize(e2));
    float fm = 0, fbm = 0;
    SMT_CUDA_CHECK(cudaEventElapsedTime(&fm, e0, e1));
    SMT_CUDA_CHECK(cudaEventElapsedTime(&fbm, e0, e2));
    if (it >= warmup) tf.push_back(fm), tfb.push_back(fbm);
  }
  SMT_CUDA_CHECK(cudaStreamSynchronize(st));
  const std::vector<float> dx_host = copy_to_host(dx);
  for (float v : dx_host) SMT_CHECK(std::isfinite(v), "bench moe: non-finite input gradient");
  for (auto e : {e0, e1, e2}) SMT_CUDA_CHECK(cudaEventDestroy(e));
  SMT_CUBLAS_CHECK(cublasDestroy(handle));
  SMT_CUDA_CHECK(cudaStreamDestroy(st));
  Timing r;
  r.fwd_ms = median(tf);
  r.fwdbwd_ms = median(tfb);
  r.rows = R;
  r.backend = gpu::experts_gemm_backend(precision);
  return r;
}

std::string gpu_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  SMT_CUDA_CHECK(cudaGetDevice(&dev));
  SMT_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}
#endif

}  // namespace

int cmd_bench_moe(int argc, char** argv) {
  std::string device = "cpu", precision;
  int64_t tokens = 32768, d = 0, f = 0, experts = 8, top_k = 2;
  int warmup = 2, repeat = 10, threads = 0;
  bool json = false;
  uint64_t seed = 1;
  po::options_description desc("smt bench moe: one MoE layer forward + backward (benchmark B2 of BENCHMARKS.md)");
  desc.add_options()("help", "this help")("device", po::value(&device)->default_value(device), "cpu | cuda")(
      "tokens", po::value(&tokens)->default_value(tokens), "tokens T")(
      "d", po::value(&d)->default_value(0), "model dim (with --f; default: both B2 rows, 1024x4096 and 512x1024)")(
      "f", po::value(&f)->default_value(0), "expert hidden dim (with --d)")(
      "experts", po::value(&experts)->default_value(experts), "experts E (1..64)")(
      "top-k", po::value(&top_k)->default_value(top_k), "experts per token k (1..E)")(
      "precision", po::value(&precision), "GEMM operands: fp32 | bf16 (cuda default bf16; cpu: fp32 only)")(
      "warmup", po::value(&warmup)->default_value(warmup), "untimed repetitions")(
      "repeat", po::value(&repeat)->default_value(repeat), "timed repetitions (median)")(
      "threads", po::value(&threads)->default_value(0), "CPU threads (0 = all cores)")(
      "seed", po::value(&seed)->default_value(seed), "inputs and weights")(
      "json", po::bool_switch(&json), "one JSON object per row on stdout instead of the table");
  if (!parse_command_options(argc, argv, desc)) return 0;
  const bool gpu = bench_device_is_cuda(device);
  if (precision.empty()) precision = gpu ? "bf16" : "fp32";
  SMT_USAGE_CHECK(precision == "fp32" || precision == "bf16", "--precision must be fp32 or bf16, got '", precision,
                  "'");
  SMT_USAGE_CHECK(gpu || precision == "fp32", "--precision bf16 needs --device cuda (the CPU layer is fp32)");
  SMT_USAGE_CHECK(tokens > 0, "--tokens must be > 0, got ", tokens);
  SMT_USAGE_CHECK(d >= 0 && f >= 0 && (d > 0) == (f > 0), "--d and --f go together, both > 0");
  SMT_USAGE_CHECK(experts >= 1 && experts <= 64, "--experts must be in 1..64, got ", experts);
  SMT_USAGE_CHECK(top_k >= 1 && top_k <= experts, "--top-k must be in 1..", experts, ", got ", top_k);
  SMT_USAGE_CHECK(warmup >= 0 && repeat > 0, "--warmup must be >= 0 and --repeat > 0");
  std::vector<std::pair<int64_t, int64_t>> sizes;
  if (d > 0) sizes.push_back({d, f});
  else sizes = {{1024, 4096}, {512, 1024}};
  set_num_threads(threads);
  std::string card = "-";
#ifdef SMT_CUDA
  if (gpu) card = gpu_name();
#endif
  if (!json) {
    std::printf("smt bench moe, device %s%s, precision %s, T %lld, E %lld, top-%lld, median of %d (after %d warm-up)\n",
                device.c_str(), gpu ? (" (" + card + ")").c_str() : (" (" + std::to_string(num_threads()) + " threads)").c_str(),
                precision.c_str(), static_cast<long long>(tokens), static_cast<long long>(experts),
                static_cast<long long>(top_k), repeat, warmup);
    std::printf("%6s %6s %8s %10s %12s %14s %14s %18s\n", "d", "f", "rows", "fwd_ms", "fwdbwd_ms", "expert_TFLOP/s",
                "tokens/s", "gemm_backend");
  }
  for (const auto& [dd, ff] : sizes) {
    const Shape s{tokens, dd, ff, experts, top_k};
    const LayerData data(s, seed);
    Timing t;
#ifdef SMT_CUDA
    if (gpu)
      t = time_cuda(s, data, precision == "bf16" ? gpu::Precision::kBf16 : gpu::Precision::kFp32, warmup, repeat);
#endif
    if (!gpu) t = time_cpu(s, data, warmup, repeat);
    const double flops = 3.0 * (static_cast<double>(top_k) * tokens * 2.0 * 2.0 * dd * ff);
    const double tflops = flops / (t.fwdbwd_ms * 1e-3) / 1e12;
    const double tokens_per_s = tokens / (t.fwdbwd_ms * 1e-3);
    if (json) {
      JsonObject o;
      o.add("impl", "smt").add("device", device).add("gpu", card).add("precision", precision).add("T", tokens)
          .add("d", dd).add("f", ff).add("E", experts).add("k", top_k).add("rows", t.rows).add("fwd_ms", t.fwd_ms)
          .add("fwdbwd_ms", t.fwdbwd_ms).add("fwdbwd_expert_tflops", tflops).add("tokens_per_s", tokens_per_s)
          .add("gemm_backend", t.backend).add("repeat", static_cast<int64_t>(repeat))
          .add("warmup", static_cast<int64_t>(warmup));
      std::cout << o.str() << std::endl;
    } else {
      std::printf("%6lld %6lld %8lld %10.3f %12.3f %14.3f %14.0f %18s\n", static_cast<long long>(dd),
                  static_cast<long long>(ff), static_cast<long long>(t.rows), t.fwd_ms, t.fwdbwd_ms, tflops,
                  tokens_per_s, t.backend.c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace smt
