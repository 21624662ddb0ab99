// `smt bench attention --device cpu|cuda`: the sparse-attention kernels over the B3 grid of
// BENCHMARKS.md (patterns x sequence length x head dim, 16 heads, block 128 on the GPU), forward
// and backward timed separately, one row per case with element and block density, useful
// TFLOP/s (only allowed pairs; backward counted as 2.5x the forward), peak memory, and the
// speed-up against smt's own dense kernel (the same kernel on the dense pattern, same size).
// On the GPU, --kernel flash (the default: bf16 tensor-core kernels, kernels/flash_attention.h)
// or reference (the fp32 kernels of gpu_ops.h); the CPU has its fp32 kernels only.
// Everything printed is measured.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "io/json.h"
#include "kernels/attention.h"
#include "kernels/attention_pattern.h"
#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "kernels/flash_attention.h"
#include "kernels/gpu_ops.h"
#endif

namespace po = boost::program_options;

namespace smt {

namespace {

struct Case {
  std::string label;  // pattern as printed ("causal" = dense + causal)
  AttnPatternConfig pattern;
};

// The B3 patterns at block size b for N tokens: dense, causal dense, local +-2 blocks,
// random 20% of the key blocks, fixed (block_sparse) stride 8, bigbird (1 global, +-1 block, 3 random).
std::vector<Case> b3_cases(int N, int b, bool causal_all, uint64_t seed, const std::vector<std::string>& only) {
  const int nb = (N + b - 1) / b;
  auto base = [&](AttnPatternKind kind, bool causal) {
    AttnPatternConfig c;
    c.kind = kind;
    c.causal = causal;
    c.block_size = b;
    c.seed = seed;
    return c;
  };
  std::vector<Case> cases;
  cases.push_back({"dense", base(AttnPatternKind::kDense, causal_all)});
  if (!causal_all) cases.push_back({"causal", base(AttnPatternKind::kDense, true)});
  AttnPatternConfig local = base(AttnPatternKind::kLocal, causal_all);
  local.window = 2 * b;
  cases.push_back({"local", local});
  AttnPatternConfig random = base(AttnPatternKind::kRandom, causal_all);
  random.num_random_blocks = std::max(0, static_cast<int>(std::lround(0.2 * nb)) - 1);
  cases.push_back({"random", random});
  AttnPatternConfig fixed = base(AttnPatternKind::kBlockSparse, causal_all);
  fixed.stride_blocks = 8;
  cases.push_back({"block_sparse", fixed});
  AttnPatternConfig bigbird = base(AttnPatternKind::kBigBird, causal_all);
  bigbird.num_global_blocks = 1;
  bigbird.window = b;
  bigbird.num_random_blocks = 3;
  cases.push_back({"bigbird", bigbird});
  if (only.empty()) return cases;
  std::vector<Case> kept;
  for (const auto& c : cases)
    if (std::find(only.begin(), only.end(), c.label) != only.end()) kept.push_back(c);
  return kept;
}

std::vector<int64_t> parse_list(const std::string& s, const char* what) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      SMT_USAGE_CHECK(used == item.size() && v > 0, "--", what, ": '", item, "' is not a positive integer");
      out.push_back(v);
    } catch (const std::logic_error&) {
      throw UsageError(detail::concat("--", what, ": '", item, "' is not a positive integer"));
    }
  }
  SMT_USAGE_CHECK(!out.empty(), "--", what, " is empty");
  return out;
}

struct Timing {
  double fwd_ms = 0, bwd_ms = 0, mem_mib = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Timing time_cpu(const BlockMask& mask, int64_t B, int64_t H, int64_t hd, int warmup, int repeat, uint64_t seed) {
  const int64_t N = mask.seq_len, n = B * N * H * hd;
  std::vector<float> q(n), k(n), v(n), o(n), dout(n), dq(n), dk(n), dv(n), lse(B * H * N);
  Rng rng(seed, 3);
  for (auto* buf : {&q, &k, &v, &dout})
    for (auto& x : *buf) x = static_cast<float>(rng.normal());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<double> tf, tb;
  for (int it = 0; it < warmup + repeat; ++it) {
    Timer t;
    cpu::attention_forward<float>(o.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, mask, B, H, hd, scale);
    const double f = t.seconds();
    std::fill(dq.begin(), dq.end(), 0.0f);
    std::fill(dk.begin(), dk.end(), 0.0f);
    std::fill(dv.begin(), dv.end(), 0.0f);
    Timer t2;
    cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), o.data(), lse.data(), q.data(),
                                   k.data(), v.data(), nullptr, mask, B, H, hd, scale);
    const double b = t2.seconds();
    if (it >= warmup) tf.push_back(f), tb.push_back(b);
  }
  Timing r;
  r.fwd_ms = 1e3 * median(tf);
  r.bwd_ms = 1e3 * median(tb);
  // The buffers the two calls use: q k v o dout dq dk dv, lse, and the mask lists.
  const double bytes = (8.0 * n + B * H * N) * sizeof(float) +
                       mask.nnz_blocks() * (3 * sizeof(int32_t) + 2) + 2.0 * (mask.num_blocks + 1) * sizeof(int32_t);
  r.mem_mib = bytes / (1 << 20);
  return r;
}

#ifdef SMT_CUDA
// Peak device memory of one timed case: the drop in free memory while its buffers are allocated
// (cudaMemGetInfo) plus the stream-ordered pool's high-water mark of the kernels' temporaries.
class PeakMemory {
 public:
  PeakMemory() {
    int dev = 0;
    SMT_CUDA_CHECK(cudaDeviceSynchronize());
    SMT_CUDA_CHECK(cudaGetDevice(&dev));
    SMT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, dev));
    SMT_CUDA_CHECK(cudaMemPoolTrimTo(pool_, 0));
    uint64_t zero = 0;
    SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero));
    size_t total = 0;
    SMT_CUDA_CHECK(cudaMemGetInfo(&free0_, &total));
  }
  void buffers_allocated() {
    size_t free1 = 0, total = 0;
    SMT_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    buffers_ = free0_ > free1 ? free0_ - free1 : 0;
  }
  double mib() const {
    uint64_t used_high = 0;
    SMT_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &used_high));
    return static_cast<double>(buffers_ + used_high) / (1 << 20);
  }

 private:
  cudaMemPool_t pool_{};
  size_t free0_ = 0, buffers_ = 0;
};

// Times fwd() and bwd() with events on the default stream: median over `repeat` after `warmup`.
template <typename Fwd, typename Bwd>
void time_events(Fwd fwd, Bwd bwd, int warmup, int repeat, Timing* r) {
  retain_stream_ordered_memory();  // the kernels' temporaries are not re-mapped after every timed call
  cudaEvent_t e0, e1, e2;
  SMT_CUDA_CHECK(cudaEventCreate(&e0));
  SMT_CUDA_CHECK(cudaEventCreate(&e1));
  SMT_CUDA_CHECK(cudaEventCreate(&e2));
  std::vector<double> tf, tb;
  for (int it = 0; it < warmup + repeat; ++it) {
    SMT_CUDA_CHECK(cudaEventRecord(e0, nullptr));
    fwd();
    SMT_CUDA_CHECK(cudaEventRecord(e1, nullptr));
    bwd();
    SMT_CUDA_CHECK(cudaEventRecord(e2, nullptr));
    SMT_CUDA_CHECK(cudaEventSynchronize(e2));
    float f = 0, b = 0;
    SMT_CUDA_CHECK(cudaEventElapsedTime(&f, e0, e1));
    SMT_CUDA_CHECK(cudaEventElapsedTime(&b, e1, e2));
    if (it >= warmup) tf.push_back(f), tb.push_back(b);
  }
  for (auto e : {e0, e1, e2}) SMT_CUDA_CHECK(cudaEventDestroy(e));
  r->fwd_ms = median(tf);
  r->bwd_ms = median(tb);
}

// The fp32 reference kernels (gpu::attention_forward / attention_backward).
Timing time_cuda_reference(const BlockMask& mask, int64_t B, int64_t H, int64_t hd, int warmup, int repeat,
                           uint64_t seed) {
  const int64_t N = mask.seq_len, n = B * N * H * hd;
  PeakMemory peak;
  std::vector<float> host(n);
  Rng rng(seed, 3);
  DeviceBuffer<float> q(n), k(n), v(n), o(n), dout(n), dq(n), dk(n), dv(n), lse(B * H * N);
  for (DeviceBuffer<float>* buf : {&q, &k, &v, &dout}) {
    for (auto& x : host) x = static_cast<float>(rng.normal());
    SMT_CUDA_CHECK(cudaMemcpy(buf->data(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
  const gpu::DeviceBlockMask dmask = gpu::upload_block_mask(mask);
  peak.buffers_allocated();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Timing r;
  time_events(
      [&] {
        gpu::attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, dmask, B, H, hd, scale,
                               nullptr);
      },
      [&] {
        gpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), o.data(), lse.data(), q.data(),
                                k.data(), v.data(), nullptr, dmask, B, H, hd, scale, nullptr);
      },
      warmup, repeat, &r);
  r.mem_mib = peak.mib();
  return r;
}

// The bf16 flash kernels: q, k, v, dout random normal in bf16; bf16 gradients only.
Timing time_cuda_flash(const BlockMask& mask, int64_t B, int64_t H, int64_t hd, int warmup, int repeat,
                       uint64_t seed, gpu::FlashDqMode dq_mode) {
  const int64_t N = mask.seq_len, n = B * N * H * hd;
  PeakMemory peak;
  DeviceBuffer<gpu::bf16> q(n), k(n), v(n), o(n), dout(n), dq(n), dk(n), dv(n);
  DeviceBuffer<float> lse(B * H * N);
  {
    std::vector<float> host(n);
    DeviceBuffer<float> staging(n);
    Rng rng(seed, 3);
    for (DeviceBuffer<gpu::bf16>* buf : {&q, &k, &v, &dout}) {
      for (auto& x : host) x = static_cast<float>(rng.normal());
      SMT_CUDA_CHECK(cudaMemcpy(staging.data(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
      gpu::cast_fp32_to_bf16(buf->data(), staging.data(), n, nullptr);
    }
    SMT_CUDA_CHECK(cudaDeviceSynchronize());
  }
  const gpu::DeviceBlockMask dmask = gpu::upload_block_mask(mask);
  peak.buffers_allocated();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  gpu::FlashAttentionGrads grads;
  grads.dq = dq.data();
  grads.dk = dk.data();
  grads.dv = dv.data();
  Timing r;
  time_events(
      [&] {
        gpu::flash_attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, dmask, B, H, hd,
                                     scale, nullptr);
      },
      [&] {
        gpu::flash_attention_backward(grads, dout.data(), o.data(), lse.data(), q.data(), k.data(), v.data(), nullptr,
                                      dmask, B, H, hd, scale, dq_mode, nullptr);
      },
      warmup, repeat, &r);
  r.mem_mib = peak.mib();
  return r;
}
#endif

}  // namespace

int cmd_bench_attention(int argc, char** argv) {
  std::string device = "cpu", seqs, head_dims = "64", patterns, json_path, masks_path, kernel, dq_mode = "atomic";
  int64_t heads = 0, batch = 0, block = 0;
  int warmup = 1, repeat = 3, threads = 0;
  bool causal = false;
  uint64_t seed = 1;
  po::options_description desc(
      "smt bench attention: sparse attention kernels over the B3 grid (BENCHMARKS.md)");
  desc.add_options()("help", "this help")("device", po::value(&device)->default_value(device), "cpu | cuda")(
      "kernel", po::value(&kernel),
      "cuda: flash (bf16 tensor cores, default) | reference (fp32); cpu: reference (the only one)")(
      "dq", po::value(&dq_mode)->default_value(dq_mode), "flash dq reduction: atomic | deterministic")(
      "seq", po::value(&seqs), "sequence lengths, comma-separated (default cuda: 1024,4096,16384,65536; cpu: 1024,4096)")(
      "head-dim", po::value(&head_dims)->default_value(head_dims), "head dims, comma-separated (64,128)")(
      "heads", po::value(&heads)->default_value(0), "heads (0 = 16 on cuda, 4 on cpu)")(
      "batch", po::value(&batch)->default_value(0), "batch (0 = 32768 / N tokens on cuda, at least 1; 1 on cpu)")(
      "block", po::value(&block)->default_value(0), "block size (0 = 128 on cuda, 64 on cpu)")(
      "patterns", po::value(&patterns), "subset, comma-separated: dense,causal,local,random,block_sparse,bigbird")(
      "causal", po::bool_switch(&causal), "make every pattern causal (the dense 'causal' row is then dropped)")(
      "warmup", po::value(&warmup)->default_value(warmup), "untimed repetitions")(
      "repeat", po::value(&repeat)->default_value(repeat), "timed repetitions (median)")(
      "threads", po::value(&threads)->default_value(0), "CPU threads (0 = all cores)")(
      "seed", po::value(&seed)->default_value(seed), "random blocks and inputs")(
      "json", po::value(&json_path), "also write one JSON object per row to this file")(
      "dump-masks", po::value(&masks_path),
      "write every case's block lists as JSONL (bench/torch_attention.py builds FlexAttention masks from them)");
  if (!parse_command_options(argc, argv, desc)) return 0;
  const bool gpu = bench_device_is_cuda(device);
  if (kernel.empty()) kernel = gpu ? "flash" : "reference";
  SMT_USAGE_CHECK(kernel == "flash" || kernel == "reference", "--kernel must be flash or reference, got '", kernel,
                  "'");
  SMT_USAGE_CHECK(gpu || kernel == "reference", "--kernel flash needs --device cuda (the CPU has the reference only)");
  SMT_USAGE_CHECK(dq_mode == "atomic" || dq_mode == "deterministic", "--dq must be atomic or deterministic, got '",
                  dq_mode, "'");
  const bool flash = kernel == "flash";
  SMT_USAGE_CHECK(warmup >= 0 && repeat > 0 && heads >= 0 && batch >= 0 && block >= 0,
                  "--warmup must be >= 0, --repeat > 0, --heads/--batch/--block >= 0");
  if (seqs.empty()) seqs = gpu ? "1024,4096,16384,65536" : "1024,4096";
  const std::vector<int64_t> Ns = parse_list(seqs, "seq"), hds = parse_list(head_dims, "head-dim");
  std::vector<std::string> only;
  if (!patterns.empty()) {
    std::stringstream ss(patterns);
    std::string p;
    while (std::getline(ss, p, ',')) {
      SMT_USAGE_CHECK(p == "dense" || p == "causal" || p == "local" || p == "random" || p == "block_sparse" ||
                          p == "bigbird",
                      "--patterns: unknown pattern '", p, "'");
      only.push_back(p);
    }
  }
  for (int64_t hd : hds) SMT_USAGE_CHECK(hd % 2 == 0 && hd <= 128, "--head-dim ", hd, ": even and <= 128 supported");
  if (flash)
    for (int64_t hd : hds) SMT_USAGE_CHECK(hd == 64 || hd == 128, "--head-dim ", hd, ": the flash kernel supports 64 and 128");
  if (heads == 0) heads = gpu ? 16 : 4;
  if (block == 0) block = gpu ? 128 : 64;
  SMT_USAGE_CHECK(!flash || block % 64 == 0, "--block ", block, ": the flash kernel needs a multiple of 64");
  set_num_threads(threads);
  std::ofstream json, masks;
  if (!json_path.empty()) {
    json.open(json_path);
    SMT_USAGE_CHECK(json.good(), "--json: cannot write ", json_path);
  }
  if (!masks_path.empty()) {
    masks.open(masks_path);
    SMT_USAGE_CHECK(masks.good(), "--dump-masks: cannot write ", masks_path);
  }
  const std::string kernel_desc = flash ? "flash bf16, dq " + dq_mode : std::string("reference fp32");
  std::printf("smt bench attention, device %s%s, kernel %s, %lld heads, block %lld, median of %d (after %d warm-up)\n",
              device.c_str(), gpu ? "" : (" (" + std::to_string(num_threads()) + " threads)").c_str(),
              kernel_desc.c_str(), static_cast<long long>(heads), static_cast<long long>(block), repeat, warmup);
  std::printf("%-13s %6s %3s %4s %8s %8s %9s %9s %9s %8s %9s %8s\n", "pattern", "N", "B", "hd", "elem_den",
              "block_den", "fwd_ms", "bwd_ms", "total_ms", "TFLOP/s", "mem_MiB", "vs_dense");
  for (int64_t N : Ns)
    for (int64_t hd : hds) {
      const int64_t B = batch > 0 ? batch : (gpu ? std::max<int64_t>(1, 32768 / N) : 1);
      double dense_total = 0;
      for (const Case& c : b3_cases(static_cast<int>(N), static_cast<int>(block), causal, seed, only)) {
        const BlockMask mask = build_block_mask(c.pattern, static_cast<int>(N), 0);
        if (masks.is_open()) {
          auto ints = [](const auto& v) { return std::vector<int64_t>(v.begin(), v.end()); };
          JsonObject m;
          m.add("pattern", c.label).add("seq_len", N).add("batch", B).add("heads", heads).add("head_dim", hd)
              .add("block", block).add("causal", c.pattern.causal).add("window", static_cast<int64_t>(c.pattern.window))
              .add("element_density", mask.element_density()).add("q_row_ptr", ints(mask.q_row_ptr))
              .add("q_col_idx", ints(mask.q_col_idx)).add("q_kind", ints(mask.q_kind));
          masks << m.str() << "\n";
        }
        Timing t;
#ifdef SMT_CUDA
        if (gpu && flash)
          t = time_cuda_flash(mask, B, heads, hd, warmup, repeat, seed,
                              dq_mode == "deterministic" ? gpu::FlashDqMode::kDeterministic : gpu::FlashDqMode::kAtomic);
        else if (gpu)
          t = time_cuda_reference(mask, B, heads, hd, warmup, repeat, seed);
#endif
        if (!gpu) t = time_cpu(mask, B, heads, hd, warmup, repeat, seed);
        const double total = t.fwd_ms + t.bwd_ms;
        if (c.label == "dense") dense_total = total;
        // Useful work: 2 GEMMs of 2*hd flops per allowed (q, k) pair forward; backward = 2.5x.
        const double pairs = mask.element_density() * static_cast<double>(N) * N;
        const double flops = 3.5 * 4.0 * pairs * hd * B * heads;
        const double tflops = flops / (total * 1e-3) / 1e12;
        const double speedup = dense_total > 0 ? dense_total / total : 0;
        char vs[16];
        if (dense_total > 0) std::snprintf(vs, sizeof vs, "%.2fx", speedup);
        else std::snprintf(vs, sizeof vs, "-");
        std::printf("%-13s %6lld %3lld %4lld %8.3f %9.3f %9.3f %9.3f %9.3f %8.3f %9.1f %8s\n", c.label.c_str(),
                    static_cast<long long>(N), static_cast<long long>(B), static_cast<long long>(hd),
                    mask.element_density(), mask.block_density(), t.fwd_ms, t.bwd_ms, total, tflops, t.mem_mib, vs);
        std::fflush(stdout);
        if (json.is_open()) {
          JsonObject o;
          o.add("impl", "smt").add("device", device).add("kernel", kernel).add("pattern", c.label).add("seq_len", N).add("batch", B)
              .add("heads", heads).add("head_dim", hd).add("block", block).add("causal", c.pattern.causal)
              .add("element_density", mask.element_density()).add("block_density", mask.block_density())
              .add("fwd_ms", t.fwd_ms).add("bwd_ms", t.bwd_ms).add("total_ms", total).add("useful_tflops", tflops)
              .add("mem_mib", t.mem_mib);
          if (dense_total > 0) o.add("speedup_vs_dense", speedup);
          json << o.str() << "\n";
        }
      }
    }
  return 0;
}

}  // namespace smt
