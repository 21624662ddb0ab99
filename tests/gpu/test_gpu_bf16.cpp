// GPU tests of the bf16-operand ops: the fp32 -> bf16 cast against the host rounding (bit-exact), and every
// bf16 GEMM op (gemm_row_major, linear, matmul_transposed, the experts' FFN on each grouped backend) forward
// and backward against the CPU fp32 reference on random inputs.
// Tolerances:
//   cast: bit-exact (NaN: both NaN).
//   bf16 ops vs the CPU fp32 reference: norm-relative ||gpu - cpu|| / ||cpu|| <= 1e-2 (kBf16Tol).
//   gemm_row_major vs the CPU product of the bf16-ROUNDED inputs in double: <= 1e-5 (fp32 accumulation), and
//   its distance to the unrounded fp32 product must exceed 1e-5 (the operands really were bf16).
//   Bias gradients (summed from the fp32 dy / dout): 1e-4, as the fp32 ops.
//   Experts: the kept hidden_pre within one bf16 rounding of the product of the rounded operands; the kept
//   hidden within one bf16 step of bf16(gelu(hidden_pre + b1)) on the host; rows permuted beforehand
//   (rows_ready) vs rounded in the call: 1e-6 (the same bf16 operands).
//   bf16-output GEMMs (linear_forward_bf16, linear_backward_bf16's dx_bf16) vs the fp32-output GEMM of the same
//   bf16 operands: every element within one bf16 rounding (2^-8 relative, floor 1e-5 of the largest); the
//   bf16-dy backward's fp32 dx / dw vs linear_backward given the same (exactly representable) dy: 1e-6.
// Skips every test with a visible "no CUDA device" message where no device is usable.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_env.h"
#include "core/bf16.h"
#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/error.h"
#include "kernels/gelu.h"
#include "kernels/gpu_ops.h"
#include "kernels/linear.h"
#include "kernels/moe.h"

namespace smt {
namespace {

constexpr double kBf16Tol = 1e-2;
using gpu::Precision;

class GpuBf16 : public GpuStreamTest {
 protected:
  // A device bf16 copy of host fp32 values (rounded by the GPU cast kernel).
  DeviceBuffer<__nv_bfloat16> bf16_of(const DeviceBuffer<float>& x) {
    DeviceBuffer<__nv_bfloat16> out(x.size());
    gpu::cast_fp32_to_bf16(out.data(), x.data(), static_cast<int64_t>(x.size()), stream);
    return out;
  }
};

std::vector<float> rand_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do {
      x = dist(gen);
    } while (std::fabs(x) < 1e-3f);
  }
  return v;
}

std::vector<float> rounded(std::vector<float> v) {
  for (auto& x : v) x = round_to_bf16(x);
  return v;
}

double rel_err(const std::vector<float>& gpu, const std::vector<float>& ref) {
  EXPECT_EQ(gpu.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size() && i < gpu.size(); ++i) {
    if (!std::isfinite(gpu[i])) return std::numeric_limits<double>::infinity();
    num += (double(gpu[i]) - ref[i]) * (double(gpu[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void expect_rel(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& ref,
                double tol = kBf16Tol) {
  const double e = rel_err(gpu, ref);
  EXPECT_LE(e, tol) << what << ": ||gpu - cpu|| / ||cpu|| = " << e;
  std::printf("[smt gpu tests] %-40s rel err %.3e (tol %.0e)\n", what.c_str(), e, tol);
}

std::vector<float> host(const DeviceBuffer<float>& d) { return copy_to_host(d); }

// Elements of a bf16 GEMM output farther than one bf16 rounding (relative 2^-8, plus 1e-5 of the largest
// magnitude for the fp32 sums' own ordering differences) from the fp32 result of the same product.
int64_t count_beyond_one_rounding(const DeviceBuffer<__nv_bfloat16>& got, const std::vector<float>& fp32) {
  std::vector<uint16_t> bits(fp32.size());
  EXPECT_GE(got.size(), fp32.size());
  SMT_CUDA_CHECK(cudaMemcpy(bits.data(), got.data(), bits.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  double max_abs = 0;
  for (float v : fp32) max_abs = std::max(max_abs, double(std::fabs(v)));
  int64_t bad = 0;
  for (size_t i = 0; i < fp32.size(); ++i)
    bad += std::fabs(double(float_from_bf16_bits(bits[i])) - fp32[i]) >
           std::ldexp(std::fabs(fp32[i]), -8) + 1e-5 * max_abs;
  return bad;
}

// Row-major C = alpha op(A) op(B) + beta C in double (the exact reference of the fp32-accumulated GEMM).
std::vector<float> gemm_ref(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const std::vector<float>& A,
                            int64_t lda, const std::vector<float>& B, int64_t ldb, float beta, std::vector<float> C,
                            int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t p = 0; p < K; ++p) {
        const double a = ta ? A[p * lda + i] : A[i * lda + p];
        const double b = tb ? B[j * ldb + p] : B[p * ldb + j];
        s += a * b;
      }
      C[i * ldc + j] = static_cast<float>(alpha * s + double(beta) * C[i * ldc + j]);
    }
  return C;
}

// =====================================================================================================
// Casts (bit-exact against core/bf16.h)
// =====================================================================================================
TEST_F(GpuBf16, CastMatchesHostRounding) {
  std::vector<float> x = rand_vec(100000, 1, -1e4f, 1e4f);
  std::mt19937 gen(2);
  for (int i = 0; i < 20000; ++i) x.push_back(std::bit_cast<float>(static_cast<uint32_t>(gen())));  // any bits
  for (uint32_t u : {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3fffffffu, 0x7f7fffffu, 0x7f7f7fffu, 0x00018000u,
                     0x00008001u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u})
    x.push_back(std::bit_cast<float>(u));
  const int64_t n = static_cast<int64_t>(x.size());
  auto d_x = copy_to_device(x);
  DeviceBuffer<__nv_bfloat16> d_b(n);
  DeviceBuffer<float> d_back(n);
  gpu::cast_fp32_to_bf16(d_b.data(), d_x.data(), n, stream);
  gpu::cast_bf16_to_fp32(d_back.data(), d_b.data(), n, stream);
  sync();
  std::vector<uint16_t> bits(n);
  SMT_CUDA_CHECK(cudaMemcpy(bits.data(), d_b.data(), n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  const std::vector<float> back = host(d_back);
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t want = bf16_bits_from_float(x[i]);
    const bool ok = std::isnan(x[i]) ? std::isnan(float_from_bf16_bits(bits[i])) && std::isnan(back[i])
                                     : bits[i] == want && std::bit_cast<uint32_t>(back[i]) == uint32_t(want) << 16;
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0) << "first mismatch at " << first << ": x bits 0x" << std::hex
                    << (first >= 0 ? std::bit_cast<uint32_t>(x[first]) : 0u) << " gpu 0x"
                    << (first >= 0 ? bits[first] : 0) << " host 0x" << (first >= 0 ? bf16_bits_from_float(x[first]) : 0);
}

// =====================================================================================================
// gemm_row_major with bf16 operands, every transpose combination, alpha/beta, padded leading dimensions
// =====================================================================================================
TEST_F(GpuBf16, GemmRowMajorBf16) {
  const int64_t M = 70, N = 45, K = 130;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    SCOPED_TRACE("trans_a " + std::to_string(ta) + " trans_b " + std::to_string(tb));
    const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = N + 2;
    const auto A = rand_vec(a_rows * lda, 10 + t), B = rand_vec(b_rows * ldb, 20 + t), C0 = rand_vec(M * ldc, 30 + t);
    const float alpha = 0.75f, beta = 0.5f;
    const auto exact_fp32 = gemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, ldc);
    const auto exact_rounded = gemm_ref(ta, tb, M, N, K, alpha, rounded(A), lda, rounded(B), ldb, beta, C0, ldc);
    auto dA = copy_to_device(A), dB = copy_to_device(B), dC = copy_to_device(C0);
    auto bA = bf16_of(dA), bB = bf16_of(dB);
    gpu::gemm_row_major(ta, tb, M, N, K, alpha, bA.data(), lda, bB.data(), ldb, beta, dC.data(), ldc, handle, stream);
    sync();
    const auto C = host(dC);
    expect_rel("gemm bf16 vs fp32 reference", C, exact_fp32);
    expect_rel("gemm bf16 vs rounded-input reference", C, exact_rounded, 1e-5);
    EXPECT_GT(rel_err(C, exact_fp32), 1e-5) << "result indistinguishable from fp32 operands";
  }
  // Operands of different precision are refused.
  DeviceBuffer<float> f32(16), c(16);
  DeviceBuffer<__nv_bfloat16> b16(16);
  EXPECT_THROW(gpu::gemm_row_major(false, false, 4, 4, 4, 1.0f, f32.data(), 4, b16.data(), 4, 0.0f, c.data(), 4,
                                   handle, stream),
               Error);
}

// =====================================================================================================
// linear and matmul_transposed with bf16 operands, forward and backward, against the CPU fp32 ops
// =====================================================================================================
TEST_F(GpuBf16, LinearBf16) {
  const int64_t M = 96, n_in = 80, n_out = 72;
  const auto x = rand_vec(M * n_in, 40), w = rand_vec(n_in * n_out, 41, -0.3f, 0.3f), b = rand_vec(n_out, 42);
  auto d_x = copy_to_device(x), d_w = copy_to_device(w), d_b = copy_to_device(b);
  auto bx = bf16_of(d_x), bw = bf16_of(d_w);
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    const auto y0 = rand_vec(M * n_out, 43);
    std::vector<float> y_c = y0;
    cpu::linear_forward<float>(y_c.data(), x.data(), w.data(), b.data(), M, n_in, n_out, accumulate);
    auto d_y = copy_to_device(y0);
    gpu::linear_forward(d_y.data(), bx.data(), bw.data(), d_b.data(), M, n_in, n_out, accumulate, handle, stream);
    sync();
    expect_rel("linear_forward bf16", host(d_y), y_c);
  }
  const auto dy = rand_vec(M * n_out, 44);
  const auto dx0 = rand_vec(M * n_in, 45), dw0 = rand_vec(n_in * n_out, 46), db0 = rand_vec(n_out, 47);
  std::vector<float> dx_c = dx0, dw_c = dw0, db_c = db0;
  cpu::linear_backward<float>(dx_c.data(), dw_c.data(), db_c.data(), dy.data(), x.data(), w.data(), M, n_in, n_out);
  auto d_dy = copy_to_device(dy), d_dx = copy_to_device(dx0), d_dw = copy_to_device(dw0), d_db = copy_to_device(db0);
  gpu::linear_backward(d_dx.data(), d_dw.data(), d_db.data(), d_dy.data(), bx.data(), bw.data(), M, n_in, n_out, handle,
                       stream);
  sync();
  // The accumulated buffers start random, so compare the increments (what the bf16 GEMMs computed).
  auto minus = [](std::vector<float> a, const std::vector<float>& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
    return a;
  };
  expect_rel("linear_backward dx increment", minus(host(d_dx), dx0), minus(dx_c, dx0));
  expect_rel("linear_backward dw increment", minus(host(d_dw), dw0), minus(dw_c, dw0));
  expect_rel("linear_backward db (fp32 dy)", host(d_db), db_c, 1e-4);
  EXPECT_THROW(gpu::linear_forward(d_dx.data(), d_x.data(), bw.data(), nullptr, M, n_in, n_out, false, handle, stream),
               Error);
}

// linear_forward_bf16: the same product with bf16 output: within one bf16 rounding of the fp32-output
// GEMM of the same bf16 operands (relative 2^-8 per element, plus the fp32 sums' own differences).
TEST_F(GpuBf16, LinearBf16Output) {
  const int64_t M = 130, n_in = 64, n_out = 96;
  const auto x = rand_vec(M * n_in, 50), w = rand_vec(n_in * n_out, 51, -0.3f, 0.3f);
  auto d_x = copy_to_device(x), d_w = copy_to_device(w);
  auto bx = bf16_of(d_x), bw = bf16_of(d_w);
  DeviceBuffer<float> d_y32(M * n_out);
  DeviceBuffer<__nv_bfloat16> d_y16(M * n_out);
  gpu::linear_forward(d_y32.data(), bx.data(), bw.data(), nullptr, M, n_in, n_out, false, handle, stream);
  gpu::linear_forward_bf16(d_y16.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream);
  sync();
  EXPECT_EQ(count_beyond_one_rounding(d_y16, host(d_y32)), 0)
      << "elements farther than one bf16 rounding from the fp32-output GEMM";
  std::vector<float> y_c(M * n_out);
  cpu::linear_forward<float>(y_c.data(), x.data(), w.data(), nullptr, M, n_in, n_out, false);
  DeviceBuffer<float> d_y16_as32(M * n_out);
  gpu::cast_bf16_to_fp32(d_y16_as32.data(), d_y16.data(), M * n_out, stream);
  sync();
  expect_rel("linear_forward_bf16 vs cpu fp32", host(d_y16_as32), y_c);
  EXPECT_THROW(gpu::linear_forward_bf16(d_y16.data(), d_x.data(), d_w.data(), M, n_in, n_out, handle, stream), Error);
}

// linear_backward_bf16 from a dy that is already bf16: the same GEMMs as linear_backward given that dy in fp32
// (whose rounding is then exact), so dx and dw match it; dx_bf16 is that dx increment rounded once.
TEST_F(GpuBf16, LinearBackwardFromBf16Gradient) {
  const int64_t M = 112, n_in = 64, n_out = 80;
  const auto x = rand_vec(M * n_in, 60), w = rand_vec(n_in * n_out, 61, -0.3f, 0.3f);
  const auto dy = rounded(rand_vec(M * n_out, 62));  // bf16-representable
  auto d_x = copy_to_device(x), d_w = copy_to_device(w), d_dy = copy_to_device(dy);
  auto bx = bf16_of(d_x), bw = bf16_of(d_w), bdy = bf16_of(d_dy);
  const auto dx0 = rand_vec(M * n_in, 63), dw0 = rand_vec(n_in * n_out, 64);
  auto d_dx_ref = copy_to_device(dx0), d_dw_ref = copy_to_device(dw0);
  gpu::linear_backward(d_dx_ref.data(), d_dw_ref.data(), nullptr, d_dy.data(), bx.data(), bw.data(), M, n_in, n_out,
                       handle, stream);
  auto d_dx = copy_to_device(dx0), d_dw = copy_to_device(dw0);
  gpu::LinearGradsBf16 grads;
  grads.dx = d_dx.data();
  grads.dw = d_dw.data();
  gpu::linear_backward_bf16(grads, bdy.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream);
  DeviceBuffer<float> d_dx_inc(M * n_in);  // the dx increment alone, fp32
  SMT_CUDA_CHECK(cudaMemsetAsync(d_dx_inc.data(), 0, d_dx_inc.bytes(), stream));
  gpu::LinearGradsBf16 inc;
  inc.dx = d_dx_inc.data();
  gpu::linear_backward_bf16(inc, bdy.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream);
  DeviceBuffer<float> d_dx_over(M * n_in);  // overwrite_dx on garbage: the increment alone
  SMT_CUDA_CHECK(cudaMemsetAsync(d_dx_over.data(), 0xff, d_dx_over.bytes(), stream));  // NaN
  gpu::LinearGradsBf16 over;
  over.dx = d_dx_over.data();
  over.overwrite_dx = true;
  gpu::linear_backward_bf16(over, bdy.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream);
  DeviceBuffer<__nv_bfloat16> d_dx16(M * n_in);
  gpu::LinearGradsBf16 to16;
  to16.dx_bf16 = d_dx16.data();
  gpu::linear_backward_bf16(to16, bdy.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream);
  sync();
  expect_rel("linear_backward_bf16 dx vs linear_backward", host(d_dx), host(d_dx_ref), 1e-6);
  expect_rel("linear_backward_bf16 dw vs linear_backward", host(d_dw), host(d_dw_ref), 1e-6);
  expect_rel("linear_backward_bf16 overwrite_dx vs the increment", host(d_dx_over), host(d_dx_inc), 1e-6);
  EXPECT_EQ(count_beyond_one_rounding(d_dx16, host(d_dx_inc)), 0)
      << "dx_bf16 elements farther than one bf16 rounding from the fp32 dx";
  gpu::LinearGradsBf16 both;
  both.dx = d_dx.data();
  both.dx_bf16 = d_dx16.data();
  EXPECT_THROW(gpu::linear_backward_bf16(both, bdy.data(), bx.data(), bw.data(), M, n_in, n_out, handle, stream), Error);
}

TEST_F(GpuBf16, MatmulTransposedBf16) {
  const int64_t M = 64, k = 48, n = 100;
  const auto x = rand_vec(M * k, 50), w = rand_vec(n * k, 51);
  auto d_x = copy_to_device(x), d_w = copy_to_device(w);
  auto bx = bf16_of(d_x), bw = bf16_of(d_w);
  std::vector<float> y_c(M * n);
  cpu::matmul_transposed_forward<float>(y_c.data(), x.data(), w.data(), M, k, n);
  DeviceBuffer<float> d_y(M * n);
  gpu::matmul_transposed_forward(d_y.data(), bx.data(), bw.data(), M, k, n, handle, stream);
  sync();
  expect_rel("matmul_transposed_forward bf16", host(d_y), y_c);
  const auto dy = rand_vec(M * n, 52);
  std::vector<float> dx_c(M * k, 0.0f), dw_c(n * k, 0.0f);
  cpu::matmul_transposed_backward<float>(dx_c.data(), dw_c.data(), dy.data(), x.data(), w.data(), M, k, n);
  auto d_dy = copy_to_device(dy);
  DeviceBuffer<float> d_dx(M * k), d_dw(n * k);
  d_dx.memset_bytes(0);
  d_dw.memset_bytes(0);
  gpu::matmul_transposed_backward(d_dx.data(), d_dw.data(), d_dy.data(), bx.data(), bw.data(), M, k, n, handle, stream);
  sync();
  expect_rel("matmul_transposed_backward dx", host(d_dx), dx_c);
  expect_rel("matmul_transposed_backward dw", host(d_dw), dw_c);
}

// =====================================================================================================
// Experts' FFN in bf16 on every grouped backend, forward and backward, against the CPU fp32 reference
// =====================================================================================================
std::vector<int32_t> random_topk(int64_t T, int64_t E, int64_t k, uint64_t seed, int64_t skip_expert) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> idx(T * k);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int32_t e;
      bool again;
      do {
        e = static_cast<int32_t>(gen() % E);
        again = e == skip_expert;
        for (int64_t i = 0; i < j; ++i) again = again || idx[t * k + i] == e;
      } while (again);
      idx[t * k + j] = e;
    }
  return idx;
}

// Sizes: aligned (d, f multiples of 8) and odd ones (d = 37, f = 51: operand and staging offsets not 16-byte
// aligned; the bf16 GELU kernels' one-column path).
class GpuBf16Experts : public GpuBf16, public ::testing::WithParamInterface<std::pair<int64_t, int64_t>> {};

std::vector<float> host_bf16(const DeviceBuffer<__nv_bfloat16>& d, size_t n) {
  std::vector<uint16_t> bits(n);
  SMT_CUDA_CHECK(cudaMemcpy(bits.data(), d.data(), n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = float_from_bf16_bits(bits[i]);
  return out;
}

// The experts' bf16 activations [R, .] of one call.
struct KeptExperts {
  DeviceBuffer<__nv_bfloat16> rows, hidden_pre, hidden;
  gpu::ExpertsBf16Activations acts;
  KeptExperts(int64_t R, int64_t d, int64_t f) : rows(R * d), hidden_pre(R * f), hidden(R * f) {
    acts = {.rows = rows.data(), .hidden_pre = hidden_pre.data(), .hidden = hidden.data()};
  }
};

TEST_P(GpuBf16Experts, EveryBackend) {
  const int64_t T = 300, E = 4, k = 2, d = GetParam().first, f = GetParam().second;
  const auto topk = random_topk(T, E, k, 60, /*skip_expert=*/1);  // expert 1 has no rows
  const cpu::RoutingPlan plan = cpu::build_routing_plan(topk.data(), T, E, k, 0);
  ASSERT_EQ(plan.num_tokens_per_expert[1], 0);
  const int64_t R = plan.num_rows();
  const int64_t* offsets = plan.expert_row_offset.data();
  const auto rows = rand_vec(R * d, 61), w1 = rand_vec(E * d * f, 62, -0.3f, 0.3f), b1 = rand_vec(E * f, 63);
  const auto w2 = rand_vec(E * f * d, 64, -0.3f, 0.3f), b2 = rand_vec(E * d, 65), dout = rand_vec(R * d, 66);
  auto d_rows = copy_to_device(rows), d_w1 = copy_to_device(w1), d_b1 = copy_to_device(b1), d_w2 = copy_to_device(w2),
       d_b2 = copy_to_device(b2), d_dout = copy_to_device(dout);
  auto bw1 = bf16_of(d_w1), bw2 = bf16_of(d_w2);

  std::vector<float> out_c(R * d), hp_c(R * f), h_c(R * f);
  cpu::experts_forward<float>(out_c.data(), hp_c.data(), h_c.data(), rows.data(), w1.data(), b1.data(), w2.data(),
                              b2.data(), offsets, E, d, f);
  std::vector<float> drows_c(R * d, 0.0f), dw1_c(E * d * f, 0.0f), db1_c(E * f, 0.0f), dw2_c(E * f * d, 0.0f),
      db2_c(E * d, 0.0f), scratch_c(R * f);
  cpu::experts_backward<float>(drows_c.data(), dw1_c.data(), db1_c.data(), dw2_c.data(), db2_c.data(), scratch_c.data(),
                               dout.data(), rows.data(), hp_c.data(), h_c.data(), w1.data(), w2.data(), offsets, E, d,
                               f);
  // The first GEMM's exact result on the bf16-rounded operands (fp32 CPU, no bias): the kept hidden_pre must be
  // it rounded once.
  std::vector<float> rows_r(rows.size()), w1_r(w1.size()), pre_exact(R * f), unused(R * f), unused_out(R * d);
  for (size_t i = 0; i < rows.size(); ++i) rows_r[i] = round_to_bf16(rows[i]);
  for (size_t i = 0; i < w1.size(); ++i) w1_r[i] = round_to_bf16(w1[i]);
  cpu::experts_forward<float>(unused_out.data(), pre_exact.data(), unused.data(), rows_r.data(), w1_r.data(), nullptr,
                              w2.data(), nullptr, offsets, E, d, f);
  std::vector<float> b1_of_row(R * f);  // b1[expert(r)] per element, to compare hidden_pre + b1 with the CPU's
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int64_t j = 0; j < f; ++j) b1_of_row[(r - offsets[0]) * f + j] = b1[e * f + j];

  std::vector<std::vector<float>> reference_run;  // auto, pre-cast weights: the rows_ready run below must match
  for (const std::string start : {"auto", "grouped", "grouped_bf16_out", "loop"}) {
    for (bool precast : {false, true}) {
      SCOPED_TRACE("backend " + start + (precast ? ", pre-cast bf16 weights" : ", fp32 weights cast in the call"));
      gpu::set_experts_gemm_backend(Precision::kBf16, start);
      const int64_t misaligned_before = gpu::experts_gemm_misaligned_calls(Precision::kBf16);
      const gpu::GemmOperand W1 = precast ? gpu::GemmOperand(bw1.data()) : gpu::GemmOperand(d_w1.data());
      const gpu::GemmOperand W2 = precast ? gpu::GemmOperand(bw2.data()) : gpu::GemmOperand(d_w2.data());
      KeptExperts kept(R, d, f);
      DeviceBuffer<float> d_out(R * d);
      // No fp32 hidden_pre or hidden in bf16: both null.
      gpu::experts_forward(d_out.data(), nullptr, nullptr, d_rows.data(), W1, d_b1.data(), W2, d_b2.data(), offsets, E,
                           d, f, handle, stream, Precision::kBf16, &kept.acts);
      sync();
      const std::string used_fwd = gpu::experts_gemm_backend(Precision::kBf16);
      EXPECT_EQ(count_beyond_one_rounding(kept.hidden_pre, pre_exact), 0) << "hidden_pre is not bf16(rows w1)";
      const std::vector<float> pre = host_bf16(kept.hidden_pre, R * f), hidden = host_bf16(kept.hidden, R * f);
      std::vector<float> pre_b(R * f), gelu_of_pre(R * f);
      for (int64_t i = 0; i < R * f; ++i) pre_b[i] = pre[i] + b1_of_row[i];
      expect_rel("experts bf16 hidden_pre + b1 [" + used_fwd + "]", pre_b, hp_c);
      expect_rel("experts bf16 hidden [" + used_fwd + "]", hidden, h_c);
      expect_rel("experts bf16 out [" + used_fwd + "]", host(d_out), out_c);
      // hidden = bf16(gelu(hidden_pre + b1)); one bf16 step apart at most (the host GELU may round its fp32
      // value differently by an ulp, which can cross a bf16 rounding boundary).
      cpu::gelu_forward<float>(gelu_of_pre.data(), pre_b.data(), R * f);
      // One bf16 step at |g| is at most |g| 2^-7; plus 1e-5 of the largest |g| where the GELU's 1 + tanh cancels
      // (pre-activations below about -4) and an ulp of tanh is a large relative error.
      double max_gelu = 0;
      for (float g : gelu_of_pre) max_gelu = std::max(max_gelu, double(std::fabs(g)));
      int64_t beyond_one_step = 0;
      for (int64_t i = 0; i < R * f; ++i)
        beyond_one_step += std::fabs(hidden[i] - round_to_bf16(gelu_of_pre[i])) >
                           std::ldexp(std::fabs(gelu_of_pre[i]), -7) + 1e-5 * max_gelu;
      EXPECT_EQ(beyond_one_step, 0) << "hidden is not bf16(gelu(hidden_pre + b1))";

      DeviceBuffer<float> d_drows(R * d), d_dw1(E * d * f), d_db1(E * f), d_dw2(E * f * d), d_db2(E * d);
      for (DeviceBuffer<float>* b : {&d_dw1, &d_db1, &d_dw2, &d_db2}) b->memset_bytes(0);
      d_drows.memset_bytes(0xff);  // NaN: drows is overwritten (drows_accumulate = false) on every backend
      // No fp32 rows, hidden_pre, hidden or scratch: the kept bf16 activations only.
      gpu::experts_backward(d_drows.data(), d_dw1.data(), d_db1.data(), d_dw2.data(), d_db2.data(), nullptr,
                            d_dout.data(), nullptr, nullptr, nullptr, W1, d_b1.data(), W2, offsets, E, d, f, handle,
                            stream, Precision::kBf16, &kept.acts, /*drows_accumulate=*/false);
      sync();
      const std::string used = gpu::experts_gemm_backend(Precision::kBf16);
      expect_rel("experts bf16 drows [" + used + "]", host(d_drows), drows_c);
      expect_rel("experts bf16 dw1 [" + used + "]", host(d_dw1), dw1_c);
      expect_rel("experts bf16 db1 [" + used + "]", host(d_db1), db1_c);
      expect_rel("experts bf16 dw2 [" + used + "]", host(d_dw2), dw2_c);
      expect_rel("experts bf16 db2 (fp32 dout)", host(d_db2), db2_c, 1e-4);
      // The empty expert's weight gradients stay exactly zero.
      const auto dw1_g = host(d_dw1);
      for (int64_t i = 1 * d * f; i < 2 * d * f; ++i) ASSERT_EQ(dw1_g[i], 0.0f) << "expert 1 dw1 at " << i;
      // Operands whose bf16 rows are not 16-byte multiples (d = 37) never go to a grouped call: each call
      // runs as the loop and the backend stays where it was set.
      if (d % 8 != 0 && start != "loop") {
        EXPECT_GT(gpu::experts_gemm_misaligned_calls(Precision::kBf16), misaligned_before);
        EXPECT_EQ(used, start == "auto" ? "unused" : start);
      } else {
        EXPECT_NE(used, "unused");
      }
      if (start == "loop") EXPECT_EQ(used, "loop");
      std::printf("[smt gpu tests] experts bf16 backend: asked %s, used %s\n", start.c_str(), used.c_str());
      if (start == "auto" && precast)
        reference_run = {host(d_out), host(d_drows), host(d_dw1), host(d_dw2), host(d_db1), host(d_db2)};

      // The model's one-rank path: the output in bf16 without b2 (added by the combine), dout and drows in bf16.
      if (!precast) continue;
      DeviceBuffer<__nv_bfloat16> d_out16(R * d), d_drows16(R * d);
      gpu::experts_forward(d_out16.data(), nullptr, nullptr, d_rows.data(), W1, d_b1.data(), W2, nullptr, offsets, E, d,
                           f, handle, stream, Precision::kBf16, &kept.acts);
      auto d_dout16 = bf16_of(d_dout);
      for (DeviceBuffer<float>* b : {&d_dw1, &d_db1, &d_dw2, &d_db2}) b->memset_bytes(0);
      gpu::experts_backward(d_drows16.data(), d_dw1.data(), d_db1.data(), d_dw2.data(), d_db2.data(), nullptr,
                            d_dout16.data(), nullptr, nullptr, nullptr, W1, d_b1.data(), W2, offsets, E, d, f, handle,
                            stream, Precision::kBf16, &kept.acts, /*drows_accumulate=*/false);
      sync();
      std::vector<float> out16_b = host_bf16(d_out16, R * d);
      for (int64_t e = 0; e < E; ++e)
        for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
          for (int64_t c = 0; c < d; ++c) out16_b[r * d + c] += b2[e * d + c];  // out: absolute rows
      expect_rel("experts bf16 out16 + b2 [" + used + "]", out16_b, out_c);
      expect_rel("experts bf16 drows16 [" + used + "]", host_bf16(d_drows16, R * d), drows_c);
      expect_rel("experts bf16 dw1 (bf16 dout) [" + used + "]", host(d_dw1), dw1_c);
      expect_rel("experts bf16 db1 (bf16 dout) [" + used + "]", host(d_db1), db1_c);
      expect_rel("experts bf16 dw2 (bf16 dout) [" + used + "]", host(d_dw2), dw2_c);
      expect_rel("experts bf16 db2 (bf16 dout)", host(d_db2), db2_c);
    }
  }

  // rows_ready: the kept rows filled beforehand (as the model permutes them from a bf16 copy of its input) and
  // no fp32 rows passed at all: the same results as rounding the rows inside the call.
  {
    gpu::set_experts_gemm_backend(Precision::kBf16, "auto");
    KeptExperts kept(R, d, f);
    gpu::cast_fp32_to_bf16(kept.rows.data(), d_rows.data() + offsets[0] * d, R * d, stream);
    kept.acts.rows_ready = true;
    DeviceBuffer<float> d_out(R * d), d_drows(R * d), d_dw1(E * d * f), d_dw2(E * f * d);
    for (DeviceBuffer<float>* b : {&d_drows, &d_dw1, &d_dw2}) b->memset_bytes(0);
    gpu::experts_forward(d_out.data(), nullptr, nullptr, nullptr, bw1.data(), d_b1.data(), bw2.data(), d_b2.data(),
                         offsets, E, d, f, handle, stream, Precision::kBf16, &kept.acts);
    gpu::experts_backward(d_drows.data(), d_dw1.data(), nullptr, d_dw2.data(), nullptr, nullptr, d_dout.data(), nullptr,
                          nullptr, nullptr, bw1.data(), d_b1.data(), bw2.data(), offsets, E, d, f, handle, stream,
                          Precision::kBf16, &kept.acts);
    sync();
    const std::vector<std::vector<float>> got = {host(d_out), host(d_drows), host(d_dw1), host(d_dw2)};
    const char* names[] = {"out", "drows", "dw1", "dw2"};
    ASSERT_EQ(reference_run.size(), 6u);
    for (int i = 0; i < 4; ++i)
      expect_rel(std::string("rows_ready ") + names[i] + " vs rows rounded in the call", got[i], reference_run[i], 1e-6);
  }

  // Experts whose rows start at row S > 0 of the fp32 arrays (absolute rows; the kept bf16 activations from
  // their row 0): the same results as from row 0.
  {
    const int64_t S = 3;
    std::vector<int64_t> offsets_s(E + 1);
    for (int64_t e = 0; e <= E; ++e) offsets_s[e] = offsets[e] + S;
    std::vector<float> rows_s((R + S) * d, 0.0f), dout_s((R + S) * d, 0.0f);  // the first S rows are not read
    std::copy(rows.begin(), rows.end(), rows_s.begin() + S * d);
    std::copy(dout.begin(), dout.end(), dout_s.begin() + S * d);
    auto d_rows_s = copy_to_device(rows_s), d_dout_s = copy_to_device(dout_s);
    gpu::set_experts_gemm_backend(Precision::kBf16, "auto");
    KeptExperts kept(R, d, f);
    DeviceBuffer<float> d_out((R + S) * d), d_drows((R + S) * d), d_dw1(E * d * f), d_db1(E * f), d_dw2(E * f * d),
        d_db2(E * d);
    for (DeviceBuffer<float>* b : {&d_dw1, &d_db1, &d_dw2, &d_db2}) b->memset_bytes(0);
    gpu::experts_forward(d_out.data(), nullptr, nullptr, d_rows_s.data(), bw1.data(), d_b1.data(), bw2.data(),
                         d_b2.data(), offsets_s.data(), E, d, f, handle, stream, Precision::kBf16, &kept.acts);
    gpu::experts_backward(d_drows.data(), d_dw1.data(), d_db1.data(), d_dw2.data(), d_db2.data(), nullptr,
                          d_dout_s.data(), nullptr, nullptr, nullptr, bw1.data(), d_b1.data(), bw2.data(),
                          offsets_s.data(), E, d, f, handle, stream, Precision::kBf16, &kept.acts,
                          /*drows_accumulate=*/false);
    sync();
    auto from_row_s = [&](const std::vector<float>& v) { return std::vector<float>(v.begin() + S * d, v.end()); };
    const std::vector<std::vector<float>> got = {from_row_s(host(d_out)), from_row_s(host(d_drows)), host(d_dw1),
                                                 host(d_dw2), host(d_db1), host(d_db2)};
    const char* names[] = {"out", "drows", "dw1", "dw2", "db1", "db2"};
    for (int i = 0; i < 6; ++i)
      expect_rel(std::string("first row 3: ") + names[i] + " vs first row 0", got[i], reference_run[i], 1e-6);
  }
  gpu::set_experts_gemm_backend(Precision::kBf16, "auto");

  // Refused: kept activations in an fp32 call, bf16 weights in an fp32 call, a bf16 call without the kept
  // activations or with one of them missing, an fp32 call without its fp32 hidden; unknown backend names.
  DeviceBuffer<float> d_out(R * d), d_hp(R * f), d_h(R * f);
  KeptExperts kept(R, d, f);
  EXPECT_THROW(gpu::experts_forward(d_out.data(), d_hp.data(), d_h.data(), d_rows.data(), d_w1.data(), nullptr,
                                    d_w2.data(), nullptr, offsets, E, d, f, handle, stream, Precision::kFp32, &kept.acts),
               Error);
  EXPECT_THROW(gpu::experts_forward(d_out.data(), d_hp.data(), d_h.data(), d_rows.data(), bw1.data(), nullptr,
                                    bw2.data(), nullptr, offsets, E, d, f, handle, stream, Precision::kFp32),
               Error);
  EXPECT_THROW(gpu::experts_forward(d_out.data(), d_hp.data(), d_h.data(), d_rows.data(), bw1.data(), nullptr,
                                    bw2.data(), nullptr, offsets, E, d, f, handle, stream, Precision::kBf16),
               Error);
  gpu::ExpertsBf16Activations no_pre = kept.acts;
  no_pre.hidden_pre = nullptr;
  EXPECT_THROW(gpu::experts_forward(d_out.data(), nullptr, nullptr, d_rows.data(), bw1.data(), nullptr, bw2.data(),
                                    nullptr, offsets, E, d, f, handle, stream, Precision::kBf16, &no_pre),
               Error);
  EXPECT_THROW(gpu::experts_backward(d_out.data(), nullptr, nullptr, nullptr, nullptr, nullptr, d_out.data(), nullptr,
                                     nullptr, nullptr, bw1.data(), nullptr, bw2.data(), offsets, E, d, f, handle, stream,
                                     Precision::kBf16, &no_pre),
               Error);
  EXPECT_THROW(gpu::experts_forward(d_out.data(), d_hp.data(), nullptr, d_rows.data(), d_w1.data(), nullptr,
                                    d_w2.data(), nullptr, offsets, E, d, f, handle, stream, Precision::kFp32),
               Error);
  DeviceBuffer<__nv_bfloat16> d_out16(R * d);
  EXPECT_THROW(gpu::experts_forward(d_out16.data(), nullptr, nullptr, d_rows.data(), bw1.data(), nullptr, bw2.data(),
                                    d_b2.data(), offsets, E, d, f, handle, stream, Precision::kBf16, &kept.acts),
               Error);  // a bf16 out leaves b2 to the combine
  EXPECT_THROW(gpu::experts_backward(d_out16.data(), nullptr, nullptr, nullptr, nullptr, nullptr, d_out.data(), nullptr,
                                     nullptr, nullptr, bw1.data(), nullptr, bw2.data(), offsets, E, d, f, handle, stream,
                                     Precision::kBf16, &kept.acts, /*drows_accumulate=*/true),
               Error);  // a bf16 drows is only overwritten
  EXPECT_THROW(gpu::set_experts_gemm_backend(Precision::kFp32, "grouped_bf16_out"), Error);
  EXPECT_THROW(gpu::set_experts_gemm_backend(Precision::kBf16, "cutlass"), Error);
}
// The combine on the experts' bf16 output without its second bias (the bias added per assignment's expert),
// its backward into bf16 row gradients, and permute_backward from bf16 rows, against the CPU fp32 ops on the
// same (bf16-valued) rows plus bias. A capacity drops some assignments.
TEST_F(GpuBf16, CombineFromBf16RowsWithExpertBias) {
  const int64_t T = 150, E = 4, k = 2, d = 37;
  const auto topk = random_topk(T, E, k, 80, -1);
  const cpu::RoutingPlan plan = cpu::build_routing_plan(topk.data(), T, E, k, /*capacity=*/60);
  const int64_t R = plan.num_rows();
  ASSERT_LT(R, T * k) << "the capacity should drop some assignments";
  const gpu::DeviceRoutingPlan dplan = gpu::upload_routing_plan(plan);
  auto d_topk = copy_to_device(topk);
  const auto bias = rand_vec(E * d, 81), w = rand_vec(T * k, 82, 0.1f, 1.0f), residual = rand_vec(T * d, 83),
             dy = rand_vec(T * d, 84);
  auto d_rows_f = copy_to_device(rand_vec(R * d, 85));
  auto d_rows16 = bf16_of(d_rows_f);
  const std::vector<float> rows16 = host_bf16(d_rows16, R * d);
  std::vector<float> rows_b(R * d);  // the CPU's rows_out: the bf16 values plus their expert's bias
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = plan.expert_row_offset[e]; r < plan.expert_row_offset[e + 1]; ++r)
      for (int64_t c = 0; c < d; ++c) rows_b[r * d + c] = rows16[r * d + c] + bias[e * d + c];
  auto d_bias = copy_to_device(bias), d_w = copy_to_device(w), d_res = copy_to_device(residual), d_dy = copy_to_device(dy);

  std::vector<float> y_c = residual;
  cpu::unpermute_forward<float>(y_c.data(), rows_b.data(), w.data(), plan, d);
  DeviceBuffer<float> d_y(T * d);
  gpu::unpermute_forward(d_y.data(), d_rows16.data(), d_w.data(), dplan, d, stream, d_res.data(), d_bias.data(),
                         d_topk.data());
  std::vector<float> drows_c(R * d, 0.0f), dtopk_c(T * k, 0.0f);
  cpu::unpermute_backward<float>(drows_c.data(), dtopk_c.data(), dy.data(), rows_b.data(), w.data(), plan, d);
  DeviceBuffer<__nv_bfloat16> d_drows16(R * d);
  DeviceBuffer<float> d_dtopk(T * k);
  d_dtopk.memset_bytes(0);
  gpu::unpermute_backward(d_drows16.data(), d_dtopk.data(), d_dy.data(), d_rows16.data(), d_w.data(), dplan, d, stream,
                          d_bias.data(), d_topk.data());
  sync();
  expect_rel("bf16 combine y (fp32 sums of the same values)", host(d_y), y_c, 1e-6);
  expect_rel("bf16 combine dtopk_weight", host(d_dtopk), dtopk_c, 1e-5);
  EXPECT_EQ(count_beyond_one_rounding(d_drows16, drows_c), 0) << "drows_out is not bf16(w * dy)";
  // Without the bias the rows are taken as they are.
  std::vector<float> y0_c = residual;
  cpu::unpermute_forward<float>(y0_c.data(), rows16.data(), w.data(), plan, d);
  gpu::unpermute_forward(d_y.data(), d_rows16.data(), d_w.data(), dplan, d, stream, d_res.data(), nullptr, nullptr);
  sync();
  expect_rel("bf16 combine y without bias", host(d_y), y0_c, 1e-6);

  // permute_backward from the bf16 row gradients: the fp32 sums of their values.
  const std::vector<float> drows16 = host_bf16(d_drows16, R * d);
  std::vector<float> dx_c(T * d, 0.0f);
  cpu::permute_backward<float>(dx_c.data(), drows16.data(), plan, d);
  DeviceBuffer<float> d_dx(T * d);
  d_dx.memset_bytes(0xff);  // NaN: overwritten (accumulate = false)
  gpu::permute_backward(d_dx.data(), d_drows16.data(), dplan, d, stream, /*accumulate=*/false);
  sync();
  expect_rel("permute_backward from bf16 rows", host(d_dx), dx_c, 1e-6);
  EXPECT_THROW(gpu::unpermute_forward(d_y.data(), d_rows16.data(), d_w.data(), dplan, d, stream, nullptr, d_bias.data(),
                                      nullptr),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuBf16Experts,
                         ::testing::Values(std::pair<int64_t, int64_t>{64, 96}, std::pair<int64_t, int64_t>{37, 51}));

// The fp32 path does not depend on the bf16 backend state: fp32 calls under two different bf16 states give the
// same bits, within the fp32 GEMM tolerance of the CPU.
TEST_F(GpuBf16, ExpertsFp32UnaffectedByBf16State) {
  const int64_t T = 120, E = 3, k = 2, d = 32, f = 40;
  const auto topk = random_topk(T, E, k, 70, -1);
  const cpu::RoutingPlan plan = cpu::build_routing_plan(topk.data(), T, E, k, 0);
  const int64_t R = plan.num_rows();
  const auto rows = rand_vec(R * d, 71), w1 = rand_vec(E * d * f, 72, -0.3f, 0.3f), w2 = rand_vec(E * f * d, 73, -0.3f, 0.3f);
  auto d_rows = copy_to_device(rows), d_w1 = copy_to_device(w1), d_w2 = copy_to_device(w2);
  std::vector<float> out_c(R * d), hp_c(R * f), h_c(R * f);
  cpu::experts_forward<float>(out_c.data(), hp_c.data(), h_c.data(), rows.data(), w1.data(), nullptr, w2.data(),
                              nullptr, plan.expert_row_offset.data(), E, d, f);
  std::vector<std::vector<float>> outs;
  for (const std::string bf16_state : {"loop", "grouped_bf16_out"}) {
    gpu::set_experts_gemm_backend(Precision::kBf16, bf16_state);
    DeviceBuffer<float> d_out(R * d), d_hp(R * f), d_h(R * f);
    gpu::experts_forward(d_out.data(), d_hp.data(), d_h.data(), d_rows.data(), d_w1.data(), nullptr, d_w2.data(),
                         nullptr, plan.expert_row_offset.data(), E, d, f, handle, stream);
    sync();
    outs.push_back(host(d_out));
    expect_rel("experts fp32 out", outs.back(), out_c, 1e-4);
  }
  gpu::set_experts_gemm_backend(Precision::kBf16, "auto");
  EXPECT_EQ(std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * sizeof(float)), 0);
  EXPECT_NE(gpu::experts_gemm_backend(Precision::kFp32), "grouped_bf16_out");
}

}  // namespace
}  // namespace smt
