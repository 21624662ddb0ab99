// The GPU flash attention kernels (src/kernels/cuda/flash_attention_kernels.cuh) run on the CPU under the
// warp-level emulation of flash_emulator.h, so that their index arithmetic, fragment layouts, masks, online
// softmax, pipelining (cp.async groups) and barriers are checked on machines without a GPU. The launch
// logic below mirrors flash_attention.cu's host code (tile rows by block size, key bits, D, dq modes).
// Results are held to the criterion of flash_reference.h (error <= 2x that of a bf16 dense masked
// reference + a small floor, against the double CPU reference) on small shapes (every CUDA thread is a
// fiber on one OS thread); exact zeros for rows without keys and padded keys; deterministic dq = atomic dq up to
// rounding. The GPU run of the same kernels is tests/gpu/test_gpu_flash_attention.cpp.
#include "flash_emulator.h"
// (the emulator must come first)
#include "kernels/cuda/flash_attention_kernels.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <vector>

#include "flash_reference.h"
#include "kernels/attention.h"
#include "kernels/attention_pattern.h"

namespace smt {
namespace {

using namespace flash_test;
namespace fi = gpu::flash_impl;

struct EmuMask {
  std::vector<uint64_t> bits;
  flash::MaskArgs args;
  EmuMask(const BlockMask& m, const std::vector<uint8_t>& valid, int B) {
    const int N = m.seq_len, words = (N + 63) / 64;
    bits.assign(size_t(B) * words, 0);
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < N; ++k)
        if (valid[size_t(b) * N + k]) bits[size_t(b) * words + k / 64] |= 1ull << (k % 64);
    args = flash::MaskArgs{m.q_row_ptr.data(),  m.q_col_idx.data(),  m.q_kind.data(), m.q_is_full.data(),
                           m.kv_col_ptr.data(), m.kv_row_idx.data(), m.kv_entry.data(), bits.data(),
                           words,               N,                   m.block_size,     m.config.causal ? 1 : 0,
                           m.config.window};
  }
};

std::vector<fi::bf16> to_bf16(const std::vector<float>& x) {
  std::vector<fi::bf16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i].x = bf16_bits(x[i]);
  return y;
}
std::vector<float> from_bf16(const std::vector<fi::bf16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_value(x[i].x);
  return y;
}

template <int HD, int WARPS>
void emu_forward(fi::FlashArgs a, const BlockMask& mask, int B, int H) {
  a.tiles_per_block = mask.block_size / (16 * WARPS);
  emu::launch(&fi::flash_fwd_kernel<HD, WARPS>, emu::Dim3{unsigned(mask.num_blocks * a.tiles_per_block), unsigned(H), unsigned(B)},
              WARPS * 32, fi::fwd_smem_bytes<HD, WARPS>(), a);
}
template <int HD, int WARPS>
void emu_backward(fi::FlashArgs a, const BlockMask& mask, int B, int H, bool atomic) {
  a.tiles_per_block = mask.block_size / (16 * WARPS);
  const emu::Dim3 grid{unsigned(mask.num_blocks * a.tiles_per_block), unsigned(H), unsigned(B)};
  if (atomic) {
    emu::launch(&fi::flash_bwd_dkv_kernel<HD, WARPS, true>, grid, WARPS * 32,
                fi::dkv_smem_bytes<HD, WARPS, true>(), a);
  } else {
    emu::launch(&fi::flash_bwd_dkv_kernel<HD, WARPS, false>, grid, WARPS * 32,
                fi::dkv_smem_bytes<HD, WARPS, false>(), a);
    emu::launch(&fi::flash_bwd_dq_kernel<HD, WARPS>, grid, WARPS * 32, fi::dq_smem_bytes<HD, WARPS>(), a);
  }
}

struct EmuCase {
  AttnPatternKind kind;
  bool causal;
  int N, bs, hd, B, H, padding, lead_pad;
  bool eager_copies = false;  // flash_emulator.h: deferred copies catch a missing wait, eager ones a missing barrier
};

template <int HD>
void run_emulated(const EmuCase& c) {
  std::ostringstream what;
  what << attn_pattern_name(c.kind) << (c.causal ? " causal" : "") << " N=" << c.N << " bs=" << c.bs
       << " hd=" << c.hd << (c.eager_copies ? " (eager copies, shuffled threads)" : " (deferred copies)");
  emu::g_eager_copies = emu::g_shuffle_threads = c.eager_copies;  // eager copies run shuffled
  SCOPED_TRACE(what.str());
  std::printf("  emulated case %s\n", what.str().c_str());
  AttnPatternConfig cfg;
  cfg.kind = c.kind;
  cfg.causal = c.causal;
  cfg.block_size = c.bs;
  cfg.window = 70;
  cfg.num_random_blocks = 1;
  cfg.stride_blocks = 2;
  cfg.num_global_blocks = 1;
  cfg.seed = 3;
  const BlockMask mask = build_block_mask(cfg, c.N, 0);
  const int B = c.B, H = c.H, N = c.N;
  const int64_t n = int64_t(B) * N * H * HD;
  const float scale = 1.0f / std::sqrt(float(HD));
  const auto q = rand_bf16(n, 11 + c.N), k = rand_bf16(n, 12 + c.N), v = rand_bf16(n, 13 + c.N);
  const auto dout = rand_bf16(n, 14 + c.N);
  std::vector<uint8_t> valid(size_t(B) * N, 1);
  for (int i = 0; i < c.lead_pad; ++i) valid[i] = 0;
  if (B > 1)
    for (int i = N - c.padding; i < N; ++i) valid[size_t(N) + i] = 0;

  const auto qd = to_double(q), kd = to_double(k), vd = to_double(v), dod = to_double(dout);
  std::vector<double> out_x(n), lse_x(size_t(B) * H * N), dq_x(n, 0.0), dk_x(n, 0.0), dv_x(n, 0.0);
  cpu::attention_forward<double>(out_x.data(), lse_x.data(), qd.data(), kd.data(), vd.data(), valid.data(), mask, B,
                                 H, HD, scale);
  cpu::attention_backward<double>(dq_x.data(), dk_x.data(), dv_x.data(), dod.data(), out_x.data(), lse_x.data(),
                                  qd.data(), kd.data(), vd.data(), valid.data(), mask, B, H, HD, scale);
  const Bf16Reference ref = bf16_reference(q, k, v, dout, valid, mask, B, H, HD, scale);

  const auto qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), dob = to_bf16(dout);
  std::vector<fi::bf16> out(n);
  std::vector<float> lse(size_t(B) * H * N, 12345.0f);
  EmuMask em(mask, valid, B);
  const bool all_valid = std::all_of(valid.begin(), valid.end(), [](uint8_t x) { return x != 0; });
  if (all_valid) em.args.key_bits = nullptr;  // as the host code does without key_valid: bits from N
  fi::FlashArgs a{};
  a.q = qb.data();
  a.k = kb.data();
  a.v = vb.data();
  a.dout = dob.data();
  a.out = out.data();
  a.lse = lse.data();
  a.m = em.args;
  a.H = H;
  a.scale = scale;
  a.scale_log2 = scale * fi::kLog2e;
  const bool wide = flash::warps_for_block(c.bs) == 8;
  wide ? emu_forward<HD, 8>(a, mask, B, H) : emu_forward<HD, 4>(a, mask, B, H);
  const auto out_f = from_bf16(out);
  expect_flash_error("emulated out", out_f, ref.out, out_x);
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse_x[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse " << i << " = " << lse[i];
    } else {
      ASSERT_NEAR(lse[i], lse_x[i], 1e-3 * std::max(1.0, std::fabs(lse_x[i]))) << "lse " << i;
    }
  }

  // backward: D = rowsum(dout * out) by the kernel, then both dq modes
  std::vector<float> D(size_t(B) * H * N, -7.0f);
  const int64_t rows = int64_t(B) * N * H;
  const unsigned dot_blocks = unsigned((rows * (HD / 8) + 255) / 256);
  emu::launch([&](int) { fi::flash_bwd_dot_kernel<HD>(D.data(), dob.data(), out.data(), rows, N, H); },
              emu::Dim3{dot_blocks, 1, 1}, 256, 0, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        double want = 0.0;
        for (int x = 0; x < HD; ++x) want += double(dout[((b * N + i) * H + h) * HD + x]) * out_f[((b * N + i) * H + h) * HD + x];
        ASSERT_NEAR(D[(b * H + h) * N + i], want, 1e-4 * (1.0 + std::fabs(want))) << "D row " << i;
      }
  a.lse_in = lse.data();
  a.Dvec = D.data();
  std::vector<float> dq_det;
  for (bool atomic : {false, true}) {
    SCOPED_TRACE(atomic ? "atomic dq" : "deterministic dq");
    std::vector<fi::bf16> dq(n), dk(n), dv(n);
    std::vector<float> dk_acc(n, 0.5f), dq_scratch(n, 0.0f);
    a.dq = atomic ? nullptr : dq.data();
    a.dk = dk.data();
    a.dv = dv.data();
    a.dq_acc = nullptr;
    a.dk_acc = dk_acc.data();
    a.dv_acc = nullptr;
    a.dq_atomic = atomic ? dq_scratch.data() : nullptr;
    wide ? emu_backward<HD, 8>(a, mask, B, H, atomic) : emu_backward<HD, 4>(a, mask, B, H, atomic);
    std::vector<float> dq_f = atomic ? dq_scratch : from_bf16(dq);
    if (atomic)
      for (auto& x : dq_f) x = bf16r(x);  // what the finishing kernel writes
    const auto dk_f = from_bf16(dk), dv_f = from_bf16(dv);
    expect_flash_error("emulated dq", dq_f, ref.dq, dq_x);
    expect_flash_error("emulated dk", dk_f, ref.dk, dk_x);
    expect_flash_error("emulated dv", dv_f, ref.dv, dv_x);
    for (auto& x : dk_acc) x -= 0.5f;
    expect_flash_error("emulated dk fp32", dk_acc, ref.dk, dk_x);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < N; ++i)
        for (int h = 0; h < H; ++h) {
          const int64_t o = ((int64_t(b) * N + i) * H + h) * HD;
          for (int x = 0; x < HD; ++x) {
            if (valid[size_t(b) * N + i] == 0) {
              ASSERT_EQ(dk_f[o + x], 0.0f) << "dk of padded key " << i;
              ASSERT_EQ(dv_f[o + x], 0.0f) << "dv of padded key " << i;
            }
            if (std::isinf(lse_x[(int64_t(b) * H + h) * N + i])) ASSERT_EQ(dq_f[o + x], 0.0f) << "dq of empty row " << i;
          }
        }
    if (!atomic) dq_det = dq_f;
    else {
      double diff = 0.0, scale_ref = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        diff = std::max(diff, std::fabs(double(dq_f[i]) - dq_det[i]));
        scale_ref = std::max(scale_ref, std::fabs(double(dq_det[i])));
      }
      EXPECT_LE(diff, std::ldexp(scale_ref, -7)) << "atomic and deterministic dq disagree";
    }
  }
}

// Block 64 (64-row tiles, 4 warps; N = 100 leaves a 36-row last block): causal dense with empty rows (the
// first 5 keys of batch row 0 padded) and a padded tail in batch row 1; the window pattern; hd 128; no
// padding at all (key_valid null: validity from N only).
TEST(FlashEmulated, Block64DenseCausalEmptyRows) {
  run_emulated<64>({AttnPatternKind::kDense, true, 100, 64, 64, 2, 1, 30, 5});
}
TEST(FlashEmulated, Block64Local) { run_emulated<64>({AttnPatternKind::kLocal, false, 100, 64, 64, 2, 1, 9, 0, true}); }
TEST(FlashEmulated, Block64RandomHd128) {
  run_emulated<128>({AttnPatternKind::kRandom, true, 70, 64, 128, 1, 1, 0, 3, true});
}
TEST(FlashEmulated, Block64BlockSparse) {
  run_emulated<64>({AttnPatternKind::kBlockSparse, false, 200, 64, 64, 1, 1, 0, 0});
}
// Block 128 (128-row tiles, 8 warps, 64-key sub-tiles inside 128-key blocks, 128-key tiles in the backward).
TEST(FlashEmulated, Block128BigBird) {
  run_emulated<64>({AttnPatternKind::kBigBird, true, 200, 128, 64, 1, 1, 0, 2, true});
}
TEST(FlashEmulated, Block128LocalHd128) {
  run_emulated<128>({AttnPatternKind::kLocal, true, 130, 128, 128, 1, 1, 0, 1});
}
TEST(FlashEmulated, Block128BlockSparsePadded) {
  run_emulated<64>({AttnPatternKind::kBlockSparse, false, 260, 128, 64, 2, 1, 40, 0, true});
}
TEST(FlashEmulated, Block64DenseHd128Padded) {
  run_emulated<128>({AttnPatternKind::kDense, false, 100, 64, 128, 2, 1, 20, 0});
}

}  // namespace
}  // namespace smt
