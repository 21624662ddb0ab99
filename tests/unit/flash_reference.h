// Shared by the flash attention tests (tests/unit/test_flash_emulated.cpp on the CPU, tests/gpu/
// test_gpu_flash_attention.cpp on the GPU): bf16 rounding on the host, random bf16 inputs, the "bf16 dense
// masked reference" and the FlashAttention error criterion.
//
// Criterion: for out and each of dq, dk, dv,
//     max |flash - exact| <= 2 * max |bf16ref - exact| + floor,   floor = 2^-10 * max |exact|
// where exact = smt::cpu::attention_forward/backward<double> on the bf16-rounded inputs, and bf16ref is a
// dense masked attention as a plain bf16 framework computes it (PyTorch's math path): every GEMM takes bf16
// operands, accumulates in fp32 and rounds its output to bf16; per (b, h), over the allowed pairs only
// (BlockMask::allowed and key_valid):
//     S = bf16(scale * (q k^T)_f32);  P = bf16(softmax_f32(S)) (rows without keys: 0);  out = bf16((P v)_f32);
//     dP = bf16((dout v^T)_f32);  D_i = sum_j P_ij dP_ij (f32);  dS = bf16(P (dP - D));
//     dq = bf16(scale (dS k)_f32);  dk = bf16(scale (dS^T q)_f32);  dv = bf16((P^T dout)_f32).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "kernels/attention_pattern.h"

namespace smt::flash_test {

// ---- bf16 on the host (round to nearest even, core/bf16.h) ----
inline uint16_t bf16_bits(float x) { return bf16_bits_from_float(x); }
inline float bf16_value(uint16_t bits) { return float_from_bf16_bits(bits); }
inline float bf16r(float x) { return bf16_value(bf16_bits(x)); }

// Normal(0, 1) values already rounded to bf16.
inline std::vector<float> rand_bf16(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = bf16r(dist(gen));
  return x;
}
inline std::vector<float> rand_f32(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(gen);
  return x;
}

inline std::vector<double> to_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// ---- the bf16 dense masked reference (see the header) ----
struct Bf16Reference {
  std::vector<float> out, dq, dk, dv;  // [B, N, H, hd]
};

inline Bf16Reference bf16_reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                             const std::vector<float>& dout, const std::vector<uint8_t>& valid, const BlockMask& mask,
                             int64_t B, int64_t H, int64_t hd, float scale) {
  const int64_t N = mask.seq_len, rs = H * hd;
  Bf16Reference r;
  r.out.assign(B * N * rs, 0.0f);
  r.dq.assign(B * N * rs, 0.0f);
  r.dk.assign(B * N * rs, 0.0f);
  r.dv.assign(B * N * rs, 0.0f);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    auto row = [&](const std::vector<float>& x, int64_t n) { return x.data() + (b * N + n) * rs + h * hd; };
    std::vector<std::vector<int>> keys(N);  // allowed keys per query row
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j)
        if (valid[b * N + j] != 0 && mask.allowed(static_cast<int>(i), static_cast<int>(j)))
          keys[i].push_back(static_cast<int>(j));
    std::vector<std::vector<float>> P(N), dS(N);
    std::vector<float> acc(hd);
    std::vector<float> dk_acc(N * hd, 0.0f), dv_acc(N * hd, 0.0f);
    for (int64_t i = 0; i < N; ++i) {
      const float* qi = row(q, i);
      const float* doi = row(dout, i);
      const auto& ks = keys[i];
      std::vector<float> s(ks.size());
      float mx = -INFINITY;
      for (size_t x = 0; x < ks.size(); ++x) {
        const float* kj = row(k, ks[x]);
        float dot = 0.0f;
        for (int64_t c = 0; c < hd; ++c) dot += qi[c] * kj[c];
        s[x] = bf16r(scale * dot);
        mx = std::max(mx, s[x]);
      }
      float sum = 0.0f;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      P[i].resize(ks.size());
      for (size_t x = 0; x < ks.size(); ++x) P[i][x] = bf16r(s[x] / sum);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t x = 0; x < ks.size(); ++x) {
        const float* vj = row(v, ks[x]);
        for (int64_t c = 0; c < hd; ++c) acc[c] += P[i][x] * vj[c];
      }
      float* oi = r.out.data() + (b * N + i) * rs + h * hd;
      for (int64_t c = 0; c < hd; ++c) oi[c] = bf16r(acc[c]);
      // backward of the row
      std::vector<float> dP(ks.size());
      float D = 0.0f;
      for (size_t x = 0; x < ks.size(); ++x) {
        const float* vj = row(v, ks[x]);
        float dot = 0.0f;
        for (int64_t c = 0; c < hd; ++c) dot += doi[c] * vj[c];
        dP[x] = bf16r(dot);
        D += P[i][x] * dP[x];
      }
      dS[i].resize(ks.size());
      for (size_t x = 0; x < ks.size(); ++x) dS[i][x] = bf16r(P[i][x] * (dP[x] - D));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t x = 0; x < ks.size(); ++x) {
        const int j = ks[x];
        const float* kj = row(k, j);
        for (int64_t c = 0; c < hd; ++c) {
          acc[c] += dS[i][x] * kj[c];
          dk_acc[j * hd + c] += dS[i][x] * qi[c];
          dv_acc[j * hd + c] += P[i][x] * doi[c];
        }
      }
      float* dqi = r.dq.data() + (b * N + i) * rs + h * hd;
      for (int64_t c = 0; c < hd; ++c) dqi[c] = bf16r(scale * acc[c]);
    }
    for (int64_t j = 0; j < N; ++j) {
      float* dkj = r.dk.data() + (b * N + j) * rs + h * hd;
      float* dvj = r.dv.data() + (b * N + j) * rs + h * hd;
      for (int64_t c = 0; c < hd; ++c) {
        dkj[c] = bf16r(scale * dk_acc[j * hd + c]);
        dvj[c] = bf16r(dv_acc[j * hd + c]);
      }
    }
  }
  return r;
}

inline double max_abs(const std::vector<double>& x) {
  double m = 0.0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}
inline double max_err(const std::vector<float>& x, const std::vector<double>& ref) {
  double m = 0.0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(double(x[i]) - ref[i]));
  return m;
}

// The criterion of the header; prints the numbers so a GPU run's log shows the margins.
inline void expect_flash_error(const std::string& what, const std::vector<float>& flash, const std::vector<float>& bf16ref,
                        const std::vector<double>& exact) {
  ASSERT_EQ(flash.size(), exact.size()) << what;
  const double e_flash = max_err(flash, exact), e_ref = max_err(bf16ref, exact);
  const double floor = std::ldexp(max_abs(exact), -10);
  std::printf("    %-26s flash err %.3e  bf16 ref err %.3e  (bound %.3e)\n", what.c_str(), e_flash, e_ref,
              2.0 * e_ref + floor);
  EXPECT_TRUE(std::isfinite(e_flash)) << what;
  EXPECT_LE(e_flash, 2.0 * e_ref + floor) << what << ": flash max error " << e_flash << ", bf16 reference "
                                          << e_ref << ", floor " << floor;
}

}  // namespace smt::flash_test
