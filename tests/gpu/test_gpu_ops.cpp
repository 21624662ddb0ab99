// GPU op tests: every smt::gpu op, forward and backward, against its smt::cpu reference (float) on random
// inputs (never zeros; gradient buffers start random to check accumulation), with the tolerance stated per op.
// Skips every test with a visible "no CUDA device: ..." message when no device is usable, so the binary
// exits 0 on GPU-less machines. Also checks that long-sequence attention is not O(N^2) in memory.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gpu_test_env.h"
#include "core/bf16.h"
#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/error.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/attention_pattern.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/gpu_ops.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/pool.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace smt {
namespace {

// ---------------------------------------------------------------------------------------------------
// Tolerances (per op family):
//   kElementwise: fp32 elementwise / per-row ops (embedding, rmsnorm, rope, gelu, cross-entropy, pool,
//                 router, permute, adamw): |gpu - cpu| <= 1e-5 |cpu| + 1e-6 max|cpu| (the small absolute
//                 floor covers values that cancel to ~0, e.g. gelu near x = -3 or rmsnorm dx).
//   kReduction:   atomics or a different summation order (embedding backward, rmsnorm dweight, column
//                 sums, dtopk_weight): 1e-4 relative, floor 1e-4 max|cpu|.
//   kGemm:        cuBLAS fp32 (CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH: no TF32): norm-relative
//                 ||gpu - cpu|| / ||cpu|| <= 1e-4.
//   kAttention:   1e-4 relative, floor 1e-4 max|cpu| (lse: -inf must match exactly).
//   Double results (cross-entropy sum, sum of squares): 1e-6 and 1e-10 relative.
//   Fused bf16 outputs (rmsnorm, rope forward and backward): bit-exact with the op's fp32 result rounded.
// ---------------------------------------------------------------------------------------------------
struct Tol {
  double rtol, atol_frac;
};
constexpr Tol kElementwise{1e-5, 1e-6};
constexpr Tol kReduction{1e-4, 1e-4};
constexpr Tol kAttention{1e-4, 1e-4};
constexpr double kGemmNormTol = 1e-4;

class GpuEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string why;
    if (!gpu_available(&why)) {
      std::printf("[smt gpu tests] no CUDA device: %s -- every test is skipped\n", why.c_str());
      return;
    }
    int dev = 0, runtime = 0, driver = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
      (void)cudaRuntimeGetVersion(&runtime);
      (void)cudaDriverGetVersion(&driver);
      int optin = 0;
      (void)cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
      std::printf("[smt gpu tests] device %d: %s, sm_%d%d, %.1f GiB, runtime %d, driver %d, smem opt-in %d B\n", dev,
                  prop.name, prop.major, prop.minor, double(prop.totalGlobalMem) / (1 << 30), runtime, driver, optin);
    }
  }
};
[[maybe_unused]] ::testing::Environment* const g_env = ::testing::AddGlobalTestEnvironment(new GpuEnvironment);

class Gpu : public GpuStreamTest {};

// ---- helpers ----

std::vector<float> rand_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do {
      x = dist(gen);
    } while (std::fabs(x) < 1e-3f);  // never zero
  }
  return v;
}

std::vector<int32_t> rand_ints(size_t n, uint64_t seed, int32_t lo, int32_t hi) {  // [lo, hi]
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& d) {
  return copy_to_host(d);
}

// A fused bf16 output (rmsnorm, rope) must be the op's fp32 output rounded to nearest even, bit for bit
// (same_kernel: the fp32 result came from the same kernel run), or, where the fp32 result came from another
// instantiation whose fused multiply-adds may contract differently, within one bf16 rounding of it.
void expect_bf16_is_rounded(const std::string& what, const DeviceBuffer<__nv_bfloat16>& got,
                            const std::vector<float>& fp32, bool same_kernel = true) {
  std::vector<uint16_t> bits(fp32.size());
  ASSERT_GE(got.size(), fp32.size()) << what;
  SMT_CUDA_CHECK(cudaMemcpy(bits.data(), got.data(), bits.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  size_t mismatches = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    mismatches += same_kernel ? bits[i] != bf16_bits_from_float(fp32[i])
                              : std::fabs(double(float_from_bf16_bits(bits[i])) - fp32[i]) >
                                    std::ldexp(std::fabs(double(fp32[i])), -8);
  }
  EXPECT_EQ(mismatches, 0u) << what << ": bf16 output differs from bf16(fp32 output)";
}

// Elementwise check: |g - c| <= rtol |c| + atol_frac max|c|; infinities must match exactly.
void expect_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu, Tol tol) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double max_abs = 0.0;
  for (float c : cpu)
    if (std::isfinite(c)) max_abs = std::max(max_abs, double(std::fabs(c)));
  const double atol = tol.atol_frac * std::max(max_abs, 1e-30);
  size_t bad = 0, first_bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double c = cpu[i], g = gpu[i];
    bool ok;
    if (std::isinf(c) || std::isinf(g)) {
      ok = c == g;
    } else if (std::isnan(c) || std::isnan(g)) {
      ok = false;
    } else {
      const double err = std::fabs(g - c);
      worst = std::max(worst, err / (tol.rtol * std::fabs(c) + atol));
      ok = err <= tol.rtol * std::fabs(c) + atol;
    }
    if (!ok) {
      if (bad == 0) first_bad = i;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << cpu.size() << " elements out of tolerance (rtol "
                     << tol.rtol << ", atol " << atol << "); first at " << first_bad << ": gpu "
                     << (bad ? gpu[first_bad] : 0.0f) << " cpu " << (bad ? cpu[first_bad] : 0.0f)
                     << "; worst err/tol " << worst;
}

// Norm-relative check for cuBLAS results.
void expect_norm_close(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                       double tol = kGemmNormTol) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double num = 0.0, den = 0.0;
  bool finite = true;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!std::isfinite(gpu[i])) finite = false;
    const double d = double(gpu[i]) - double(cpu[i]);
    num += d * d;
    den += double(cpu[i]) * double(cpu[i]);
  }
  EXPECT_TRUE(finite) << what << ": non-finite GPU values";
  const double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  EXPECT_LE(rel, tol) << what << ": norm-relative error " << rel;
}

// =====================================================================================================
// Embedding (forward: a copy, exact up to kElementwise; backward: atomics -> kReduction)
// =====================================================================================================
TEST_F(Gpu, Embedding) {
  const int64_t T = 300, d = 96, V = 260;
  const auto tokens = rand_ints(T, 1, 0, int32_t(V - 1));
  const auto table = rand_vec(V * d, 2);
  const auto dout = rand_vec(T * d, 3);
  const auto dtable0 = rand_vec(V * d, 4);

  std::vector<float> out_c(T * d);
  cpu::embedding_forward<float>(out_c.data(), tokens.data(), table.data(), T, d);
  auto d_tokens = copy_to_device(tokens);
  auto d_table = copy_to_device(table);
  DeviceBuffer<float> d_out(T * d);
  gpu::embedding_forward(d_out.data(), d_tokens.data(), d_table.data(), T, d, stream);
  sync();
  expect_close("embedding_forward", to_host(d_out), out_c, kElementwise);

  std::vector<float> dtable_c = dtable0;
  cpu::embedding_backward<float>(dtable_c.data(), dout.data(), tokens.data(), T, d);
  auto d_dtable = copy_to_device(dtable0);
  auto d_dout = copy_to_device(dout);
  gpu::embedding_backward(d_dtable.data(), d_dout.data(), d_tokens.data(), T, d, stream);
  sync();
  expect_close("embedding_backward", to_host(d_dtable), dtable_c, kReduction);
}

// =====================================================================================================
// RMSNorm (forward, dx: kElementwise; dweight: per-block partials, kReduction)
// =====================================================================================================
TEST_F(Gpu, RmsNorm) {
  for (int64_t d : {192, 1000}) {
    SCOPED_TRACE("d=" + std::to_string(d));
    const int64_t T = 517;
    const float eps = 1e-6f;
    const auto x = rand_vec(T * d, 10, -2.0f, 2.0f);
    const auto w = rand_vec(d, 11, 0.5f, 1.5f);
    const auto dout = rand_vec(T * d, 12);
    const auto dx0 = rand_vec(T * d, 13);
    const auto dw0 = rand_vec(d, 14);

    std::vector<float> out_c(T * d), rstd_c(T);
    cpu::rmsnorm_forward<float>(out_c.data(), rstd_c.data(), x.data(), w.data(), T, d, eps);
    auto d_x = copy_to_device(x);
    auto d_w = copy_to_device(w);
    DeviceBuffer<float> d_out(T * d), d_rstd(T);
    gpu::rmsnorm_forward(d_out.data(), d_rstd.data(), d_x.data(), d_w.data(), T, d, eps, stream);
    sync();
    const std::vector<float> out_g = to_host(d_out);
    expect_close("rmsnorm_forward out", out_g, out_c, kElementwise);
    expect_close("rmsnorm_forward rstd", to_host(d_rstd), rstd_c, kElementwise);
    DeviceBuffer<__nv_bfloat16> d_out16(T * d), d_only16(T * d);
    gpu::rmsnorm_forward(d_out.data(), nullptr, d_x.data(), d_w.data(), T, d, eps, stream, d_out16.data());
    gpu::rmsnorm_forward(nullptr, nullptr, d_x.data(), d_w.data(), T, d, eps, stream, d_only16.data());
    sync();
    expect_bf16_is_rounded("rmsnorm_forward with both outputs", d_out16, out_g);
    expect_bf16_is_rounded("rmsnorm_forward bf16 only", d_only16, out_g);
    EXPECT_THROW(gpu::rmsnorm_forward(nullptr, nullptr, d_x.data(), d_w.data(), T, d, eps, stream), Error);

    std::vector<float> dx_c = dx0, dw_c = dw0;
    cpu::rmsnorm_backward<float>(dx_c.data(), dw_c.data(), dout.data(), x.data(), w.data(), rstd_c.data(), T, d);
    auto d_dout = copy_to_device(dout);
    auto d_dx = copy_to_device(dx0);
    auto d_dw = copy_to_device(dw0);
    auto d_rstd_c = copy_to_device(rstd_c);
    gpu::rmsnorm_backward(d_dx.data(), d_dw.data(), d_dout.data(), d_x.data(), d_w.data(), d_rstd_c.data(), T, d,
                          stream);
    sync();
    expect_close("rmsnorm_backward dx", to_host(d_dx), dx_c, kElementwise);
    expect_close("rmsnorm_backward dweight", to_host(d_dw), dw_c, kReduction);
  }
}

// =====================================================================================================
// RoPE (kElementwise; also in place)
// =====================================================================================================
TEST_F(Gpu, Rope) {
  const int64_t B = 2, N = 37, H = 3, hd = 64;
  const float theta = 10000.0f;
  const int64_t n = B * N * H * hd;
  const auto x = rand_vec(n, 20);
  const auto dout = rand_vec(n, 21);
  const auto dx0 = rand_vec(n, 22);
  gpu::RopeTable table;
  gpu::ensure_rope_table(table, N + 5, hd, theta);  // a longer table serves a shorter sequence

  std::vector<float> out_c(n);
  cpu::rope_forward<float>(out_c.data(), x.data(), B, N, H, hd, theta);
  auto d_x = copy_to_device(x);
  DeviceBuffer<float> d_out(n);
  DeviceBuffer<__nv_bfloat16> d_out16(n);
  gpu::rope_forward(d_out.data(), d_out16.data(), d_x.data(), table, B, N, H, stream);
  sync();
  const std::vector<float> out_g = to_host(d_out);
  expect_close("rope_forward", out_g, out_c, kElementwise);
  expect_bf16_is_rounded("rope_forward", d_out16, out_g);
  gpu::rope_forward(d_x.data(), nullptr, d_x.data(), table, B, N, H, stream);  // in place
  sync();
  expect_close("rope_forward in place", to_host(d_x), out_c, kElementwise);
  {  // From bf16 x, in place (the bf16 q/k GEMM output): bf16 of the fp32 kernel's result on the same values.
    std::vector<float> x_r(n);
    for (int64_t i = 0; i < n; ++i) x_r[i] = round_to_bf16(x[i]);
    std::vector<float> out_r_c(n);
    cpu::rope_forward<float>(out_r_c.data(), x_r.data(), B, N, H, hd, theta);
    auto d_x_r = copy_to_device(x_r);
    DeviceBuffer<float> d_out_r(n);
    gpu::rope_forward(d_out_r.data(), nullptr, d_x_r.data(), table, B, N, H, stream);
    DeviceBuffer<__nv_bfloat16> d_xb(n);
    gpu::cast_fp32_to_bf16(d_xb.data(), d_x_r.data(), n, stream);
    gpu::rope_forward_bf16(d_xb.data(), d_xb.data(), table, B, N, H, stream);
    sync();
    const std::vector<float> out_r = to_host(d_out_r);
    expect_close("rope_forward of bf16 values (fp32 kernel)", out_r, out_r_c, kElementwise);
    expect_bf16_is_rounded("rope_forward_bf16 in place", d_xb, out_r);
    EXPECT_THROW(gpu::rope_forward_bf16(nullptr, d_xb.data(), table, B, N, H, stream), Error);
  }

  std::vector<float> dx_c = dx0;
  cpu::rope_backward<float>(dx_c.data(), dout.data(), B, N, H, hd, theta);
  auto d_dout = copy_to_device(dout);
  auto d_dx = copy_to_device(dx0);
  gpu::rope_backward(d_dx.data(), d_dout.data(), table, B, N, H, stream);
  sync();
  expect_close("rope_backward", to_host(d_dx), dx_c, kElementwise);
  // To bf16: the overwritten, rounded R^T dout (the accumulating fp32 form from zero, rounded).
  DeviceBuffer<float> d_dx_zero(n);
  SMT_CUDA_CHECK(cudaMemsetAsync(d_dx_zero.data(), 0, d_dx_zero.bytes(), stream));
  gpu::rope_backward(d_dx_zero.data(), d_dout.data(), table, B, N, H, stream);
  DeviceBuffer<__nv_bfloat16> d_dx16(n);
  SMT_CUDA_CHECK(cudaMemsetAsync(d_dx16.data(), 0x7f, d_dx16.size() * sizeof(__nv_bfloat16), stream));
  gpu::rope_backward(nullptr, d_dout.data(), table, B, N, H, stream, d_dx16.data());
  sync();
  expect_bf16_is_rounded("rope_backward to bf16", d_dx16, to_host(d_dx_zero), /*same_kernel=*/false);
  EXPECT_THROW(gpu::rope_backward(d_dx.data(), d_dout.data(), table, B, N, H, stream, d_dx16.data()), Error);

  gpu::RopeTable short_table;
  gpu::ensure_rope_table(short_table, N - 1, hd, theta);
  EXPECT_THROW(gpu::rope_backward(d_dx.data(), d_dout.data(), short_table, B, N, H, stream), Error);
  EXPECT_THROW(gpu::rope_forward(nullptr, nullptr, d_x.data(), table, B, N, H, stream), Error);
}

// =====================================================================================================
// GELU (kElementwise)
// =====================================================================================================
TEST_F(Gpu, Gelu) {
  const int64_t n = 100003;
  const auto x = rand_vec(n, 30, -9.0f, 9.0f);  // beyond the tanh clamp too
  const auto dout = rand_vec(n, 31);
  const auto dx0 = rand_vec(n, 32);

  std::vector<float> out_c(n);
  cpu::gelu_forward<float>(out_c.data(), x.data(), n);
  auto d_x = copy_to_device(x);
  DeviceBuffer<float> d_out(n);
  gpu::gelu_forward(d_out.data(), d_x.data(), n, stream);
  sync();
  expect_close("gelu_forward", to_host(d_out), out_c, kElementwise);

  std::vector<float> dx_c = dx0;
  cpu::gelu_backward<float>(dx_c.data(), dout.data(), x.data(), n);
  auto d_dout = copy_to_device(dout);
  auto d_dx = copy_to_device(dx0);
  gpu::gelu_backward(d_dx.data(), d_dout.data(), d_x.data(), n, stream);
  sync();
  expect_close("gelu_backward", to_host(d_dx), dx_c, kElementwise);

  std::vector<float> inpl_c = dout;
  cpu::gelu_backward_inplace<float>(inpl_c.data(), x.data(), n);
  auto d_inpl = copy_to_device(dout);
  gpu::gelu_backward_inplace(d_inpl.data(), d_x.data(), n, stream);
  sync();
  expect_close("gelu_backward_inplace", to_host(d_inpl), inpl_c, kElementwise);
}

// =====================================================================================================
// Cross entropy (probs, dlogits: kElementwise; summed loss (double): 1e-6 relative)
// =====================================================================================================
TEST_F(Gpu, CrossEntropy) {
  for (int64_t C : {int64_t(260), int64_t(2)}) {
    SCOPED_TRACE("C=" + std::to_string(C));
    const int64_t M = 333;
    const auto logits = rand_vec(M * C, 40, -4.0f, 4.0f);
    auto targets = rand_ints(M, 41, 0, int32_t(C - 1));
    for (int64_t i = 0; i < M; i += 9) targets[i] = -1;  // ignored rows
    const auto dl0 = rand_vec(M * C, 42);

    std::vector<float> probs_c(M * C);
    int64_t valid_c = 0;
    const double loss_c = cpu::cross_entropy_forward<float>(probs_c.data(), logits.data(), targets.data(), M, C,
                                                            &valid_c);
    auto d_logits = copy_to_device(logits);
    auto d_targets = copy_to_device(targets);
    DeviceBuffer<float> d_probs(M * C);
    int64_t valid_g = -1;
    const double loss_g = gpu::cross_entropy_forward(d_probs.data(), d_logits.data(), d_targets.data(), M, C,
                                                     &valid_g, stream);
    EXPECT_EQ(valid_g, valid_c);
    EXPECT_NEAR(loss_g, loss_c, 1e-6 * std::fabs(loss_c)) << "cross_entropy_forward sum";
    expect_close("cross_entropy_forward probs", to_host(d_probs), probs_c, kElementwise);

    const float scale = 1.0f / float(valid_c);
    std::vector<float> dl_c = dl0;
    cpu::cross_entropy_backward<float>(dl_c.data(), probs_c.data(), targets.data(), M, C, scale);
    auto d_dl = copy_to_device(dl0);
    auto d_probs_c = copy_to_device(probs_c);
    gpu::cross_entropy_backward(d_dl.data(), d_probs_c.data(), d_targets.data(), M, C, scale, stream);
    sync();
    expect_close("cross_entropy_backward", to_host(d_dl), dl_c, kElementwise);
  }
}

TEST_F(Gpu, CrossEntropyBadTargetThrows) {
  const int64_t M = 4, C = 5;
  const auto logits = rand_vec(M * C, 43);
  const std::vector<int32_t> targets = {0, 1, 5, 2};
  auto d_logits = copy_to_device(logits);
  auto d_targets = copy_to_device(targets);
  DeviceBuffer<float> d_probs(M * C);
  EXPECT_THROW(gpu::cross_entropy_forward(d_probs.data(), d_logits.data(), d_targets.data(), M, C, nullptr, stream),
               Error);
}

// =====================================================================================================
// Mean pool (kElementwise)
// =====================================================================================================
TEST_F(Gpu, MeanPool) {
  const int64_t B = 3, N = 41, d = 80;
  const auto x = rand_vec(B * N * d, 50);
  std::vector<uint8_t> valid(B * N);
  std::mt19937 gen(51);
  for (int64_t i = 0; i < B * N; ++i) valid[i] = gen() % 4 != 0;
  for (int64_t n = 0; n < N; ++n) valid[2 * N + n] = 0;  // a row with no valid position
  const auto dout = rand_vec(B * d, 52);
  const auto dx0 = rand_vec(B * N * d, 53);

  std::vector<float> out_c(B * d);
  cpu::mean_pool_forward<float>(out_c.data(), x.data(), valid.data(), B, N, d);
  auto d_x = copy_to_device(x);
  auto d_valid = copy_to_device(valid);
  DeviceBuffer<float> d_out(B * d);
  gpu::mean_pool_forward(d_out.data(), d_x.data(), d_valid.data(), B, N, d, stream);
  sync();
  expect_close("mean_pool_forward", to_host(d_out), out_c, kElementwise);

  std::vector<float> dx_c = dx0;
  cpu::mean_pool_backward<float>(dx_c.data(), dout.data(), valid.data(), B, N, d);
  auto d_dout = copy_to_device(dout);
  auto d_dx = copy_to_device(dx0);
  gpu::mean_pool_backward(d_dx.data(), d_dout.data(), d_valid.data(), B, N, d, stream);
  sync();
  expect_close("mean_pool_backward", to_host(d_dx), dx_c, kElementwise);
}

// =====================================================================================================
// Linear / matmul_transposed / column sums (cuBLAS: kGemm norm-relative; column sums: kReduction)
// =====================================================================================================
TEST_F(Gpu, Linear) {
  const int64_t M = 129, n_in = 72, n_out = 200;
  const auto x = rand_vec(M * n_in, 60);
  const auto w = rand_vec(n_in * n_out, 61);
  const auto b = rand_vec(n_out, 62);
  const auto y0 = rand_vec(M * n_out, 63);
  auto d_x = copy_to_device(x);
  auto d_w = copy_to_device(w);
  auto d_b = copy_to_device(b);

  for (int variant = 0; variant < 4; ++variant) {  // bias x accumulate
    const bool with_bias = variant & 1, accumulate = variant & 2;
    SCOPED_TRACE("bias=" + std::to_string(with_bias) + " accumulate=" + std::to_string(accumulate));
    std::vector<float> y_c = y0;
    cpu::linear_forward<float>(y_c.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, M, n_in, n_out,
                               accumulate);
    auto d_y = copy_to_device(y0);
    gpu::linear_forward(d_y.data(), d_x.data(), d_w.data(), with_bias ? d_b.data() : nullptr, M, n_in, n_out,
                        accumulate, handle, stream);
    sync();
    expect_norm_close("linear_forward", to_host(d_y), y_c);
  }

  const auto dy = rand_vec(M * n_out, 64);
  const auto dx0 = rand_vec(M * n_in, 65);
  const auto dw0 = rand_vec(n_in * n_out, 66);
  const auto db0 = rand_vec(n_out, 67);
  std::vector<float> dx_c = dx0, dw_c = dw0, db_c = db0;
  cpu::linear_backward<float>(dx_c.data(), dw_c.data(), db_c.data(), dy.data(), x.data(), w.data(), M, n_in, n_out);
  auto d_dy = copy_to_device(dy);
  auto d_dx = copy_to_device(dx0);
  auto d_dw = copy_to_device(dw0);
  auto d_db = copy_to_device(db0);
  gpu::linear_backward(d_dx.data(), d_dw.data(), d_db.data(), d_dy.data(), d_x.data(), d_w.data(), M, n_in, n_out,
                       handle, stream);
  sync();
  expect_norm_close("linear_backward dx", to_host(d_dx), dx_c);
  expect_norm_close("linear_backward dw", to_host(d_dw), dw_c);
  expect_close("linear_backward db", to_host(d_db), db_c, kReduction);
}

TEST_F(Gpu, MatmulTransposed) {
  const int64_t M = 150, k = 64, n = 260;
  const auto x = rand_vec(M * k, 70);
  const auto w = rand_vec(n * k, 71);
  const auto y0 = rand_vec(M * n, 72);  // overwritten
  std::vector<float> y_c(M * n);
  cpu::matmul_transposed_forward<float>(y_c.data(), x.data(), w.data(), M, k, n);
  auto d_x = copy_to_device(x);
  auto d_w = copy_to_device(w);
  auto d_y = copy_to_device(y0);
  gpu::matmul_transposed_forward(d_y.data(), d_x.data(), d_w.data(), M, k, n, handle, stream);
  sync();
  expect_norm_close("matmul_transposed_forward", to_host(d_y), y_c);

  const auto dy = rand_vec(M * n, 73);
  const auto dx0 = rand_vec(M * k, 74);
  const auto dw0 = rand_vec(n * k, 75);
  std::vector<float> dx_c = dx0, dw_c = dw0;
  cpu::matmul_transposed_backward<float>(dx_c.data(), dw_c.data(), dy.data(), x.data(), w.data(), M, k, n);
  auto d_dy = copy_to_device(dy);
  auto d_dx = copy_to_device(dx0);
  auto d_dw = copy_to_device(dw0);
  gpu::matmul_transposed_backward(d_dx.data(), d_dw.data(), d_dy.data(), d_x.data(), d_w.data(), M, k, n, handle,
                                  stream);
  sync();
  expect_norm_close("matmul_transposed_backward dx", to_host(d_dx), dx_c);
  expect_norm_close("matmul_transposed_backward dw", to_host(d_dw), dw_c);
}

TEST_F(Gpu, ColumnSums) {
  const int64_t M = 600, n = 70;
  const auto a = rand_vec(M * n, 80);
  const auto out0 = rand_vec(n, 81);
  std::vector<float> out_c = out0;
  cpu::add_column_sums<float>(out_c.data(), a.data(), M, n);
  auto d_a = copy_to_device(a);
  auto d_out = copy_to_device(out0);
  gpu::add_column_sums(d_out.data(), d_a.data(), M, n, stream);
  sync();
  expect_close("add_column_sums", to_host(d_out), out_c, kReduction);
}

// =====================================================================================================
// Router top-k (probs, weights, lse, dlogits: kElementwise; indices exact)
// =====================================================================================================
TEST_F(Gpu, RouterTopK) {
  struct Case {
    int64_t T, E, k;
  };
  for (const Case cs : {Case{517, 8, 2}, Case{300, 64, 6}, Case{64, 5, 1}}) {
    SCOPED_TRACE("T=" + std::to_string(cs.T) + " E=" + std::to_string(cs.E) + " k=" + std::to_string(cs.k));
    const int64_t T = cs.T, E = cs.E, k = cs.k;
    const auto logits = rand_vec(T * E, 90, -3.0f, 3.0f);
    std::vector<float> probs_c(T * E), w_c(T * k), lse_c(T);
    std::vector<int32_t> idx_c(T * k);
    cpu::router_topk_forward<float>(probs_c.data(), idx_c.data(), w_c.data(), lse_c.data(), logits.data(), T, E, k);
    auto d_logits = copy_to_device(logits);
    DeviceBuffer<float> d_probs(T * E), d_w(T * k), d_lse(T);
    DeviceBuffer<int32_t> d_idx(T * k);
    gpu::router_topk_forward(d_probs.data(), d_idx.data(), d_w.data(), d_lse.data(), d_logits.data(), T, E, k,
                             stream);
    sync();
    expect_close("router probs", to_host(d_probs), probs_c, kElementwise);
    expect_close("router lse", to_host(d_lse), lse_c, kElementwise);
    EXPECT_EQ(to_host(d_idx), idx_c) << "router top-k indices";
    expect_close("router topk_weight", to_host(d_w), w_c, kElementwise);

    const auto dw = rand_vec(T * k, 91);
    const auto dprobs = rand_vec(T * E, 92);
    const auto dlse = rand_vec(T, 93);
    const auto dz0 = rand_vec(T * E, 94);
    auto d_dw = copy_to_device(dw);
    auto d_dprobs = copy_to_device(dprobs);
    auto d_dlse = copy_to_device(dlse);
    // Device inputs from the CPU forward, so both backwards see identical probs / indices.
    auto d_probs_c = copy_to_device(probs_c);
    auto d_idx_c = copy_to_device(idx_c);
    auto d_w_c = copy_to_device(w_c);
    for (int variant = 0; variant < 2; ++variant) {
      SCOPED_TRACE(variant == 0 ? "all gradients" : "dtopk_weight only");
      std::vector<float> dz_c = dz0;
      cpu::router_topk_backward<float>(dz_c.data(), dw.data(), variant == 0 ? dprobs.data() : nullptr,
                                       variant == 0 ? dlse.data() : nullptr, probs_c.data(), idx_c.data(), w_c.data(),
                                       T, E, k);
      auto d_dz = copy_to_device(dz0);
      gpu::router_topk_backward(d_dz.data(), d_dw.data(), variant == 0 ? d_dprobs.data() : nullptr,
                                variant == 0 ? d_dlse.data() : nullptr, d_probs_c.data(), d_idx_c.data(),
                                d_w_c.data(), T, E, k, stream);
      sync();
      expect_close("router_topk_backward", to_host(d_dz), dz_c, kElementwise);
    }
  }
}

// Distinct random experts per token (optionally never `skip_expert`), as a router would produce.
std::vector<int32_t> random_topk(int64_t T, int64_t E, int64_t k, uint64_t seed, int skip_expert = -1) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> idx(T * k);
  std::vector<int32_t> pool;
  for (int32_t e = 0; e < E; ++e)
    if (e != skip_expert) pool.push_back(e);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(pool.begin(), pool.end(), gen);
    for (int64_t j = 0; j < k; ++j) idx[t * k + j] = pool[j];
  }
  return idx;
}

// =====================================================================================================
// Permute / unpermute (copies and per-token sums: kElementwise; dtopk_weight dot products: kReduction)
// =====================================================================================================
TEST_F(Gpu, PermuteUnpermute) {
  const int64_t T = 200, E = 8, k = 2, d = 48;
  const auto topk = random_topk(T, E, k, 100);
  for (double cap_factor : {0.0, 0.5}) {
    SCOPED_TRACE("capacity factor " + std::to_string(cap_factor));
    const int64_t capacity = cpu::expert_capacity(cap_factor, T, E, k);
    const cpu::RoutingPlan plan = cpu::build_routing_plan(topk.data(), T, E, k, capacity);
    if (cap_factor > 0) ASSERT_GT(plan.num_dropped(), 0) << "the capacity case must drop assignments";
    const gpu::DeviceRoutingPlan dplan = gpu::upload_routing_plan(plan);
    const int64_t R = plan.num_rows();
    const auto x = rand_vec(T * d, 101);
    const auto weights = rand_vec(T * k, 102, 0.1f, 1.0f);
    auto d_x = copy_to_device(x);
    auto d_weights = copy_to_device(weights);

    std::vector<float> rows_c(R * d);
    cpu::permute_forward<float>(rows_c.data(), x.data(), plan, d);
    DeviceBuffer<float> d_rows(R * d);
    gpu::permute_forward(d_rows.data(), d_x.data(), dplan, d, stream);
    sync();
    expect_close("permute_forward", to_host(d_rows), rows_c, kElementwise);
    // bf16: a gather, so exactly the rounded CPU rows.
    DeviceBuffer<__nv_bfloat16> d_x16(T * d), d_rows16(std::max<int64_t>(R * d, 1));
    gpu::cast_fp32_to_bf16(d_x16.data(), d_x.data(), T * d, stream);
    gpu::permute_forward(d_rows16.data(), d_x16.data(), dplan, d, stream);
    sync();
    expect_bf16_is_rounded("permute_forward bf16", d_rows16, rows_c);

    const auto drows = rand_vec(R * d, 103);
    const auto dx0 = rand_vec(T * d, 104);
    std::vector<float> dx_c = dx0;
    cpu::permute_backward<float>(dx_c.data(), drows.data(), plan, d);
    auto d_drows = copy_to_device(drows);
    auto d_dx = copy_to_device(dx0);
    gpu::permute_backward(d_dx.data(), d_drows.data(), dplan, d, stream);
    sync();
    expect_close("permute_backward", to_host(d_dx), dx_c, kElementwise);
    {  // overwrite: the CPU's accumulation from zero, whatever the buffer held
      std::vector<float> dx_from_zero(T * d, 0.0f);
      cpu::permute_backward<float>(dx_from_zero.data(), drows.data(), plan, d);
      SMT_CUDA_CHECK(cudaMemsetAsync(d_dx.data(), 0x7f, d_dx.bytes(), stream));
      gpu::permute_backward(d_dx.data(), d_drows.data(), dplan, d, stream, /*accumulate=*/false);
      sync();
      expect_close("permute_backward overwrite", to_host(d_dx), dx_from_zero, kElementwise);
    }

    const auto rows_out = rand_vec(R * d, 105);
    const auto y0 = rand_vec(T * d, 106);
    std::vector<float> y_c = y0;
    cpu::unpermute_forward<float>(y_c.data(), rows_out.data(), weights.data(), plan, d);
    auto d_rows_out = copy_to_device(rows_out);
    auto d_y = copy_to_device(y0);
    gpu::unpermute_forward(d_y.data(), d_rows_out.data(), d_weights.data(), dplan, d, stream);
    sync();
    expect_close("unpermute_forward", to_host(d_y), y_c, kElementwise);
    // With a residual: the output buffer's old contents are ignored (y = residual + the same sum).
    DeviceBuffer<float> d_y_res(T * d);
    SMT_CUDA_CHECK(cudaMemsetAsync(d_y_res.data(), 0x7f, d_y_res.bytes(), stream));  // garbage (~3.4e38)
    auto d_residual = copy_to_device(y0);
    gpu::unpermute_forward(d_y_res.data(), d_rows_out.data(), d_weights.data(), dplan, d, stream, d_residual.data());
    sync();
    expect_close("unpermute_forward with residual", to_host(d_y_res), y_c, kElementwise);

    const auto dy = rand_vec(T * d, 107);
    const auto drows_out0 = rand_vec(R * d, 108);
    const auto dweights0 = rand_vec(T * k, 109);
    std::vector<float> drows_out_c = drows_out0, dweights_c = dweights0;
    cpu::unpermute_backward<float>(drows_out_c.data(), dweights_c.data(), dy.data(), rows_out.data(), weights.data(),
                                   plan, d);
    auto d_dy = copy_to_device(dy);
    auto d_drows_out = copy_to_device(drows_out0);
    auto d_dweights = copy_to_device(dweights0);
    gpu::unpermute_backward(d_drows_out.data(), d_dweights.data(), d_dy.data(), d_rows_out.data(), d_weights.data(),
                            dplan, d, stream);
    sync();
    expect_close("unpermute_backward drows_out", to_host(d_drows_out), drows_out_c, kElementwise);
    expect_close("unpermute_backward dtopk_weight", to_host(d_dweights), dweights_c, kReduction);
    if (R > 0) {  // rows overwritten: every row is written (garbage before), as the CPU's from zero
      std::vector<float> drows_from_zero(R * d, 0.0f);
      cpu::unpermute_backward<float>(drows_from_zero.data(), nullptr, dy.data(), rows_out.data(), weights.data(), plan,
                                     d);
      SMT_CUDA_CHECK(cudaMemsetAsync(d_drows_out.data(), 0x7f, d_drows_out.bytes(), stream));
      gpu::unpermute_backward(d_drows_out.data(), nullptr, d_dy.data(), d_rows_out.data(), d_weights.data(), dplan, d,
                              stream, /*accumulate_rows=*/false);
      sync();
      expect_close("unpermute_backward rows overwritten", to_host(d_drows_out), drows_from_zero, kElementwise);
    }
  }
}

// =====================================================================================================
// Experts FFN (grouped GEMMs: kGemm norm-relative for every output and gradient)
// =====================================================================================================
TEST_F(Gpu, Experts) {
  // T = 700: about 470 rows per expert, so the bias gradients' row chunks (256 rows) are several per expert.
  const int64_t T = 700, E = 4, k = 2, d = 64, f = 96;
  const auto topk = random_topk(T, E, k, 110, /*skip_expert=*/2);  // expert 2 gets no rows
  const cpu::RoutingPlan plan = cpu::build_routing_plan(topk.data(), T, E, k, 0);
  ASSERT_EQ(plan.num_tokens_per_expert[2], 0);
  ASSERT_GT(plan.num_tokens_per_expert[0], 256);
  const int64_t R = plan.num_rows();
  const int64_t* offsets = plan.expert_row_offset.data();
  const auto rows = rand_vec(R * d, 111);
  const auto w1 = rand_vec(E * d * f, 112, -0.3f, 0.3f);
  const auto b1 = rand_vec(E * f, 113);
  const auto w2 = rand_vec(E * f * d, 114, -0.3f, 0.3f);
  const auto b2 = rand_vec(E * d, 115);
  auto d_rows = copy_to_device(rows);
  auto d_w1 = copy_to_device(w1);
  auto d_b1 = copy_to_device(b1);
  auto d_w2 = copy_to_device(w2);
  auto d_b2 = copy_to_device(b2);

  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with biases" : "without biases");
    std::vector<float> out_c(R * d), hp_c(R * f), h_c(R * f);
    cpu::experts_forward<float>(out_c.data(), hp_c.data(), h_c.data(), rows.data(), w1.data(),
                                with_bias ? b1.data() : nullptr, w2.data(), with_bias ? b2.data() : nullptr, offsets, E,
                                d, f);
    DeviceBuffer<float> d_out(R * d), d_hp(R * f), d_h(R * f);
    gpu::experts_forward(d_out.data(), d_hp.data(), d_h.data(), d_rows.data(), d_w1.data(),
                         with_bias ? d_b1.data() : nullptr, d_w2.data(), with_bias ? d_b2.data() : nullptr, offsets, E,
                         d, f, handle, stream);
    sync();
    expect_norm_close("experts_forward hidden_pre", to_host(d_hp), hp_c);
    expect_norm_close("experts_forward hidden", to_host(d_h), h_c);
    expect_norm_close("experts_forward out", to_host(d_out), out_c);

    const auto dout = rand_vec(R * d, 116);
    const auto drows0 = rand_vec(R * d, 117);
    const auto dw10 = rand_vec(E * d * f, 118);
    const auto db10 = rand_vec(E * f, 119);
    const auto dw20 = rand_vec(E * f * d, 120);
    const auto db20 = rand_vec(E * d, 121);
    std::vector<float> drows_c = drows0, dw1_c = dw10, db1_c = db10, dw2_c = dw20, db2_c = db20, scratch_c(R * f);
    cpu::experts_backward<float>(drows_c.data(), dw1_c.data(), db1_c.data(), dw2_c.data(), db2_c.data(),
                                 scratch_c.data(), dout.data(), rows.data(), hp_c.data(), h_c.data(), w1.data(),
                                 w2.data(), offsets, E, d, f);
    auto d_dout = copy_to_device(dout);
    auto d_hp_c = copy_to_device(hp_c);
    auto d_h_c = copy_to_device(h_c);
    auto d_drows = copy_to_device(drows0);
    auto d_dw1 = copy_to_device(dw10);
    auto d_db1 = copy_to_device(db10);
    auto d_dw2 = copy_to_device(dw20);
    auto d_db2 = copy_to_device(db20);
    DeviceBuffer<float> d_scratch(R * f);
    gpu::experts_backward(d_drows.data(), d_dw1.data(), d_db1.data(), d_dw2.data(), d_db2.data(), d_scratch.data(),
                          d_dout.data(), d_rows.data(), d_hp_c.data(), d_h_c.data(), d_w1.data(), /*b1=*/nullptr,
                          d_w2.data(), offsets, E, d, f, handle, stream);
    sync();
    expect_norm_close("experts_backward drows", to_host(d_drows), drows_c);
    expect_norm_close("experts_backward dw1", to_host(d_dw1), dw1_c);
    expect_norm_close("experts_backward db1", to_host(d_db1), db1_c);
    expect_norm_close("experts_backward dw2", to_host(d_dw2), dw2_c);
    expect_norm_close("experts_backward db2", to_host(d_db2), db2_c);
    {  // drows overwritten: the CPU's drows from zero, whatever the buffer held
      std::vector<float> drows_zero(R * d, 0.0f), scratch_z(R * f);
      cpu::experts_backward<float>(drows_zero.data(), nullptr, nullptr, nullptr, nullptr, scratch_z.data(), dout.data(),
                                   rows.data(), hp_c.data(), h_c.data(), w1.data(), w2.data(), offsets, E, d, f);
      SMT_CUDA_CHECK(cudaMemsetAsync(d_drows.data(), 0xff, d_drows.bytes(), stream));  // NaN: any read shows
      gpu::experts_backward(d_drows.data(), nullptr, nullptr, nullptr, nullptr, d_scratch.data(), d_dout.data(),
                            d_rows.data(), d_hp_c.data(), d_h_c.data(), d_w1.data(), /*b1=*/nullptr, d_w2.data(),
                            offsets, E, d, f, handle, stream, gpu::Precision::kFp32, nullptr,
                            /*drows_accumulate=*/false);
      sync();
      expect_norm_close("experts_backward drows overwritten", to_host(d_drows), drows_zero);
    }
  }
  const std::string backend = gpu::experts_gemm_backend();
  std::printf("[smt gpu tests] experts GEMM backend: %s\n", backend.c_str());
  RecordProperty("experts_gemm_backend", backend);
  EXPECT_NE(backend, "unused");
}

// =====================================================================================================
// AdamW (kElementwise) and sum of squares (double, 1e-10 relative)
// =====================================================================================================
TEST_F(Gpu, AdamWAndSumSquares) {
  const int64_t n = 100003;
  const auto p0 = rand_vec(n, 130);
  const auto g = rand_vec(n, 131);
  const auto m0 = rand_vec(n, 132, -0.1f, 0.1f);
  const auto v0 = rand_vec(n, 133, 0.001f, 0.1f);
  cpu::AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  const int64_t step = 3;
  const float grad_scale = 0.7f;
  std::vector<float> p_c = p0, m_c = m0, v_c = v0;
  cpu::adamw_update(p_c.data(), g.data(), m_c.data(), v_c.data(), n, hp, step, grad_scale);
  auto d_p = copy_to_device(p0);
  auto d_g = copy_to_device(g);
  auto d_m = copy_to_device(m0);
  auto d_v = copy_to_device(v0);
  gpu::adamw_update(d_p.data(), d_g.data(), d_m.data(), d_v.data(), n, hp, step, grad_scale, stream);
  sync();
  expect_close("adamw param", to_host(d_p), p_c, kElementwise);
  expect_close("adamw m", to_host(d_m), m_c, kElementwise);
  expect_close("adamw v", to_host(d_v), v_c, kElementwise);

  for (int64_t len : {int64_t(1), int64_t(1000), int64_t(1000003)}) {
    const auto x = rand_vec(len, 134 + len);
    const double s_c = cpu::sum_squares(x.data(), len);
    auto d_x = copy_to_device(x);
    const double s_g = gpu::sum_squares(d_x.data(), len, stream);
    EXPECT_NEAR(s_g, s_c, 1e-10 * s_c) << "sum_squares n=" << len;
    DeviceBuffer<double> d_s(1);
    gpu::sum_squares_on_device(d_s.data(), d_x.data(), len, stream);
    sync();
    EXPECT_EQ(to_host(d_s)[0], s_g) << "sum_squares_on_device n=" << len << ": the same reduction";
  }
  DeviceBuffer<double> d_zero(1);
  SMT_CUDA_CHECK(cudaMemsetAsync(d_zero.data(), 0xff, sizeof(double), stream));
  gpu::sum_squares_on_device(d_zero.data(), nullptr, 0, stream);
  sync();
  EXPECT_EQ(to_host(d_zero)[0], 0.0) << "sum_squares_on_device of nothing";
}

// =====================================================================================================
// Attention (kAttention) over every pattern
// =====================================================================================================
struct AttnCase {
  AttnPatternKind kind;
  bool causal;
  int N, bs, hd, B, H;
  int padding;  // padded tail of batch row 1 (row 0 unpadded); -1: batch row 1 entirely padded
};

std::string describe(const AttnCase& c) {
  std::ostringstream os;
  os << attn_pattern_name(c.kind) << (c.causal ? " causal" : " bidirectional") << " N=" << c.N << " bs=" << c.bs
     << " hd=" << c.hd << " B=" << c.B << " H=" << c.H << " padding=" << c.padding;
  return os.str();
}

void run_attention_case(const AttnCase& c, cudaStream_t stream) {
  SCOPED_TRACE(describe(c));
  AttnPatternConfig cfg;
  cfg.kind = c.kind;
  cfg.causal = c.causal;
  cfg.block_size = c.bs;
  cfg.window = c.bs;  // a window of one block: partial kWindow tiles on both sides
  cfg.num_random_blocks = 1;
  cfg.stride_blocks = 2;
  cfg.num_global_blocks = 1;
  cfg.seed = 7;
  const BlockMask mask = build_block_mask(cfg, c.N, /*layer_idx=*/1);
  const gpu::DeviceBlockMask dmask = gpu::upload_block_mask(mask);
  const int64_t B = c.B, H = c.H, hd = c.hd, N = c.N;
  const int64_t n = B * N * H * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  const auto q = rand_vec(n, 200 + c.N + hd);
  const auto k = rand_vec(n, 300 + c.N + hd);
  const auto v = rand_vec(n, 400 + c.N + hd);
  std::vector<uint8_t> valid(B * N, 1);
  if (B > 1) {
    const int pad = c.padding < 0 ? c.N : c.padding;
    for (int i = c.N - pad; i < c.N; ++i) valid[1 * N + i] = 0;
  }

  std::vector<float> out_c(n), lse_c(B * H * N);
  cpu::attention_forward<float>(out_c.data(), lse_c.data(), q.data(), k.data(), v.data(), valid.data(), mask, B, H,
                                hd, scale);
  auto d_q = copy_to_device(q);
  auto d_k = copy_to_device(k);
  auto d_v = copy_to_device(v);
  auto d_valid = copy_to_device(valid);
  DeviceBuffer<float> d_out(n), d_lse(B * H * N);
  gpu::attention_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), d_valid.data(), dmask, B, H,
                         hd, scale, stream);
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("attention_forward out", to_host(d_out), out_c, kAttention);
  expect_close("attention_forward lse", to_host(d_lse), lse_c, kAttention);

  // Backward from the CPU forward's out / lse (so both sides see the same inputs); gradients start random.
  const auto dout = rand_vec(n, 500 + c.N + hd);
  const auto dq0 = rand_vec(n, 600), dk0 = rand_vec(n, 601), dv0 = rand_vec(n, 602);
  std::vector<float> dq_c = dq0, dk_c = dk0, dv_c = dv0;
  cpu::attention_backward<float>(dq_c.data(), dk_c.data(), dv_c.data(), dout.data(), out_c.data(), lse_c.data(),
                                 q.data(), k.data(), v.data(), valid.data(), mask, B, H, hd, scale);
  auto d_dout = copy_to_device(dout);
  auto d_out_c = copy_to_device(out_c);
  auto d_lse_c = copy_to_device(lse_c);
  auto d_dq = copy_to_device(dq0);
  auto d_dk = copy_to_device(dk0);
  auto d_dv = copy_to_device(dv0);
  gpu::attention_backward(d_dq.data(), d_dk.data(), d_dv.data(), d_dout.data(), d_out_c.data(), d_lse_c.data(),
                          d_q.data(), d_k.data(), d_v.data(), d_valid.data(), dmask, B, H, hd, scale, stream);
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  // Compare the increments (gradient - initial value), so that the random start does not hide errors.
  auto delta = [](std::vector<float> a, const std::vector<float>& a0) {
    for (size_t i = 0; i < a.size(); ++i) a[i] -= a0[i];
    return a;
  };
  expect_close("attention_backward dq", delta(to_host(d_dq), dq0), delta(dq_c, dq0), kAttention);
  expect_close("attention_backward dk", delta(to_host(d_dk), dk0), delta(dk_c, dk0), kAttention);
  expect_close("attention_backward dv", delta(to_host(d_dv), dv0), delta(dv_c, dv0), kAttention);
}

TEST_F(Gpu, AttentionAllPatterns) {
  // Every pattern x causal/bidirectional, N = 200 (not a multiple of the block), block 64, hd 64,
  // batch row 1 with 37 padded keys.
  for (AttnPatternKind kind : {AttnPatternKind::kDense, AttnPatternKind::kLocal, AttnPatternKind::kRandom,
                               AttnPatternKind::kBlockSparse, AttnPatternKind::kBigBird}) {
    for (bool causal : {true, false}) {
      run_attention_case({kind, causal, 200, 64, 64, 2, 2, 37}, stream);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(Gpu, AttentionOtherShapes) {
  // hd 128 (KC = 4, the largest shared-memory tiles), block 128 (two 64-row slices per block),
  // hd 40 with block 32 (head dim not a multiple of 32, sub-tiles shorter than 64), and a batch row
  // whose keys are all padding (out = 0, lse = -inf, no gradient).
  const AttnCase cases[] = {
      {AttnPatternKind::kDense, true, 200, 64, 128, 2, 2, 37},
      {AttnPatternKind::kBigBird, false, 333, 64, 128, 2, 1, 50},
      {AttnPatternKind::kLocal, false, 300, 128, 128, 2, 2, 29},
      {AttnPatternKind::kLocal, true, 300, 128, 64, 1, 3, 0},
      {AttnPatternKind::kBlockSparse, true, 150, 32, 40, 2, 2, 11},
      {AttnPatternKind::kRandom, false, 97, 16, 96, 2, 2, 5},
      {AttnPatternKind::kDense, false, 130, 64, 64, 2, 2, -1},
  };
  for (const AttnCase& c : cases) {
    run_attention_case(c, stream);
    if (HasFatalFailure()) return;
  }
}

// Long sequence: B = 1, N = 16384, local, hd 64. Asserts that forward + backward allocate far less than
// an N x N fp32 matrix (1 GiB): the drop in free device memory (cudaMemGetInfo) and the stream-ordered
// pool's reserved peak (the default pool keeps its memory while the release threshold is raised) each stay
// under N*N*4/4, and the pool's peak use is just D = [B, H, N] floats.
TEST_F(Gpu, AttentionLongSequenceMemory) {
  const int64_t B = 1, H = 2, hd = 64, N = 16384;
  AttnPatternConfig cfg;
  cfg.kind = AttnPatternKind::kLocal;
  cfg.causal = false;
  cfg.block_size = 64;
  cfg.window = 128;
  const BlockMask mask = build_block_mask(cfg, N, 0);
  const gpu::DeviceBlockMask dmask = gpu::upload_block_mask(mask);
  const int64_t n = B * N * H * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  const auto q = rand_vec(n, 700), k = rand_vec(n, 701), v = rand_vec(n, 702), dout = rand_vec(n, 703);
  auto d_q = copy_to_device(q);
  auto d_k = copy_to_device(k);
  auto d_v = copy_to_device(v);
  auto d_dout = copy_to_device(dout);
  DeviceBuffer<float> d_out(n), d_lse(B * H * N), d_dq(n), d_dk(n), d_dv(n);
  d_dq.memset_bytes(0);
  d_dk.memset_bytes(0);
  d_dv.memset_bytes(0);

  int dev = 0;
  SMT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaMemPool_t pool;
  SMT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t keep_all = std::numeric_limits<uint64_t>::max(), zero = 0;
  SMT_CUDA_CHECK(cudaDeviceSynchronize());
  SMT_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
  SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
  SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
  size_t free0 = 0, total = 0, free1 = 0;
  SMT_CUDA_CHECK(cudaMemGetInfo(&free0, &total));

  gpu::attention_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), nullptr, dmask, B, H, hd,
                         scale, stream);
  gpu::attention_backward(d_dq.data(), d_dk.data(), d_dv.data(), d_dout.data(), d_out.data(), d_lse.data(),
                          d_q.data(), d_k.data(), d_v.data(), nullptr, dmask, B, H, hd, scale, stream);
  sync();
  SMT_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
  uint64_t pool_used_high = 0, pool_reserved_high = 0;
  SMT_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &pool_used_high));
  SMT_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &pool_reserved_high));
  SMT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &zero));
  SMT_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));

  const int64_t extra = std::max<int64_t>(0, int64_t(free0) - int64_t(free1));
  const int64_t nn_bytes = N * N * int64_t(sizeof(float));
  std::printf("[smt gpu tests] N=%lld attention: device memory +%lld B, pool peak used %llu B, reserved %llu B "
              "(N*N*4 = %lld B)\n",
              (long long)N, (long long)extra, (unsigned long long)pool_used_high,
              (unsigned long long)pool_reserved_high, (long long)nn_bytes);
  // Coarse (allocation granularity, lazy module loading): each well under N*N*4; precise: the pool's peak use.
  EXPECT_LT(extra, nn_bytes / 4);
  EXPECT_LT(int64_t(pool_reserved_high), nn_bytes / 4);
  EXPECT_LE(pool_used_high, uint64_t(B * H * N * sizeof(float)) + (1u << 20));  // only D = [B, H, N]

  // And the result is right: compare with the CPU reference.
  std::vector<float> out_c(n), lse_c(B * H * N);
  cpu::attention_forward<float>(out_c.data(), lse_c.data(), q.data(), k.data(), v.data(), nullptr, mask, B, H, hd,
                                scale);
  expect_close("long attention_forward out", to_host(d_out), out_c, kAttention);
  expect_close("long attention_forward lse", to_host(d_lse), lse_c, kAttention);
  std::vector<float> dq_c(n, 0.0f), dk_c(n, 0.0f), dv_c(n, 0.0f);
  auto out_g = to_host(d_out);
  auto lse_g = to_host(d_lse);
  cpu::attention_backward<float>(dq_c.data(), dk_c.data(), dv_c.data(), dout.data(), out_g.data(), lse_g.data(),
                                 q.data(), k.data(), v.data(), nullptr, mask, B, H, hd, scale);
  expect_close("long attention_backward dq", to_host(d_dq), dq_c, kAttention);
  expect_close("long attention_backward dk", to_host(d_dk), dk_c, kAttention);
  expect_close("long attention_backward dv", to_host(d_dv), dv_c, kAttention);
}

}  // namespace
}  // namespace smt
