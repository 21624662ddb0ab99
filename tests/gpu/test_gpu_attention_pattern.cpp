// GPU pattern metadata: gpu::build_block_mask_on_device against the CPU build_block_mask, every array
// bit for bit, for every pattern, causal and not, sequence lengths that are and are not block multiples,
// several layers and seeds, up to 65,536 tokens (the B3 grid's longest row). Also: the device mask
// matches upload_block_mask's arrays, a non-default stream works, bad configs throw before any CUDA call.
// Skips the device tests with a visible "no CUDA device: ..." message when no device is usable.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gpu_test_env.h"
#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/error.h"
#include "kernels/attention_pattern.h"
#include "kernels/gpu_attention_pattern.h"
#include "kernels/gpu_ops.h"
#include "support/pattern_config.h"

namespace smt {
namespace {

#define SKIP_WITHOUT_GPU()                                            \
  do {                                                                \
    std::string why;                                                  \
    if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why; \
  } while (0)

using testing_support::describe_pattern;
using testing_support::make_pattern;


// Every array and scalar of the device mask equals the CPU mask.
void expect_device_equals_cpu(const gpu::DeviceBlockMask& d, const BlockMask& m, const std::string& what) {
  ASSERT_EQ(d.seq_len, m.seq_len) << what;
  ASSERT_EQ(d.block_size, m.block_size) << what;
  ASSERT_EQ(d.num_blocks, m.num_blocks) << what;
  ASSERT_EQ(d.causal, m.config.causal) << what;
  ASSERT_EQ(d.window, m.config.window) << what;
  ASSERT_EQ(d.nnz, m.nnz_blocks()) << what;
  ASSERT_EQ(copy_to_host(d.q_row_ptr), m.q_row_ptr) << what;
  ASSERT_EQ(copy_to_host(d.q_col_idx), m.q_col_idx) << what;
  ASSERT_EQ(copy_to_host(d.q_kind), m.q_kind) << what;
  ASSERT_EQ(copy_to_host(d.q_is_full), m.q_is_full) << what;
  ASSERT_EQ(copy_to_host(d.kv_col_ptr), m.kv_col_ptr) << what;
  ASSERT_EQ(copy_to_host(d.kv_row_idx), m.kv_row_idx) << what;
  ASSERT_EQ(copy_to_host(d.kv_entry), m.kv_entry) << what;
}

// Every pattern with its parameters varied (random draws with r below, near and above the candidates).
std::vector<AttnPatternConfig> pattern_variants(bool causal, int bs) {
  std::vector<AttnPatternConfig> out;
  out.push_back(make_pattern(AttnPatternKind::kDense, causal, bs));
  for (int w : {0, 5, 3 * bs + 1, 100000}) {
    auto c = make_pattern(AttnPatternKind::kLocal, causal, bs);
    c.window = w;
    out.push_back(c);
  }
  for (int r : {0, 1, 3, 40, 5000})
    for (uint64_t seed : {uint64_t{0}, uint64_t{0xDEADBEEFCAFEull}}) {
      auto c = make_pattern(AttnPatternKind::kRandom, causal, bs);
      c.num_random_blocks = r;
      c.seed = seed;
      out.push_back(c);
    }
  for (int s : {1, 3, 4, 1000}) {
    auto c = make_pattern(AttnPatternKind::kBlockSparse, causal, bs);
    c.stride_blocks = s;
    out.push_back(c);
  }
  for (int g : {0, 1, 2})
    for (int w : {0, bs + 3})
      for (int r : {0, 2, 7}) {
        auto c = make_pattern(AttnPatternKind::kBigBird, causal, bs);
        c.num_global_blocks = g;
        c.window = w;
        c.num_random_blocks = r;
        c.seed = 77 + static_cast<uint64_t>(r);
        out.push_back(c);
      }
  return out;
}

TEST(GpuAttentionPattern, EveryPatternMatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  int compared = 0;
  for (bool causal : {true, false})
    for (int bs : {1, 16, 64})
      for (int n : {1, 63, 64, 1000, 4096, 5000}) {
        if (n / bs > 1100) continue;  // keep the CPU side fast
        for (const AttnPatternConfig& c : pattern_variants(causal, bs))
          for (int layer : {0, 5}) {
            const BlockMask m = build_block_mask(c, n, layer);
            const gpu::DeviceBlockMask d = gpu::build_block_mask_on_device(c, n, layer, nullptr);
            expect_device_equals_cpu(d, m, describe_pattern(c, n, layer));
            if (HasFatalFailure()) return;
            ++compared;
          }
      }
  EXPECT_GT(compared, 1000);
}

// A short run of every pattern (what bench/gpu_session.sh runs under compute-sanitizer memcheck, where
// the full sweep above is left out for time).
TEST(GpuAttentionPattern, EachPatternOnceMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {true, false}) {
    std::vector<AttnPatternConfig> configs = {make_pattern(AttnPatternKind::kDense, causal, 64),
                                              make_pattern(AttnPatternKind::kBlockSparse, causal, 64)};
    auto local = make_pattern(AttnPatternKind::kLocal, causal, 64);
    local.window = 100;
    configs.push_back(local);
    auto random = make_pattern(AttnPatternKind::kRandom, causal, 64);
    random.num_random_blocks = 4;
    random.seed = 31;
    configs.push_back(random);
    auto bigbird = make_pattern(AttnPatternKind::kBigBird, causal, 64);
    bigbird.window = 70;
    bigbird.num_random_blocks = 3;
    bigbird.num_global_blocks = 1;
    bigbird.seed = 32;
    configs.push_back(bigbird);
    for (const auto& c : configs) {
      const BlockMask m = build_block_mask(c, 1000, 2);  // 16 blocks, the last one clipped
      const gpu::DeviceBlockMask d = gpu::build_block_mask_on_device(c, 1000, 2, nullptr);
      expect_device_equals_cpu(d, m, describe_pattern(c, 1000, 2));
      if (HasFatalFailure()) return;
    }
  }
}

TEST(GpuAttentionPattern, LongSequencesMatchCpu) {
  SKIP_WITHOUT_GPU();
  // The B3 grid's long rows: 16k and 64k tokens, block 64 and 128, random ~20% density.
  for (int n : {16384, 65536})
    for (int bs : {64, 128})
      for (bool causal : {true, false}) {
        const int nb = n / bs;
        std::vector<AttnPatternConfig> configs;
        auto random = make_pattern(AttnPatternKind::kRandom, causal, bs);
        random.num_random_blocks = nb / 5;
        random.seed = 2026;
        configs.push_back(random);
        auto local = make_pattern(AttnPatternKind::kLocal, causal, bs);
        local.window = 1024;
        configs.push_back(local);
        auto bigbird = make_pattern(AttnPatternKind::kBigBird, causal, bs);
        bigbird.window = 3 * bs;
        bigbird.num_random_blocks = 3;
        bigbird.num_global_blocks = 2;
        configs.push_back(bigbird);
        configs.push_back(make_pattern(AttnPatternKind::kBlockSparse, causal, bs));
        if (n == 16384) configs.push_back(make_pattern(AttnPatternKind::kDense, causal, bs));
        for (const auto& c : configs) {
          const BlockMask m = build_block_mask(c, n, 1);
          const gpu::DeviceBlockMask d = gpu::build_block_mask_on_device(c, n, 1, nullptr);
          expect_device_equals_cpu(d, m, describe_pattern(c, n, 1));
          if (HasFatalFailure()) return;
        }
      }
}

TEST(GpuAttentionPattern, NonBlockingStreamAndUploadAgree) {
  SKIP_WITHOUT_GPU();
  cudaStream_t stream = nullptr;
  SMT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto c = make_pattern(AttnPatternKind::kBigBird, true, 32);
  c.window = 40;
  c.num_random_blocks = 2;
  c.seed = 9;
  const int n = 32 * 37 + 5;
  const BlockMask m = build_block_mask(c, n, 3);
  const gpu::DeviceBlockMask built = gpu::build_block_mask_on_device(c, n, 3, stream);
  SMT_CUDA_CHECK(cudaStreamDestroy(stream));
  expect_device_equals_cpu(built, m, describe_pattern(c, n, 3));
  const gpu::DeviceBlockMask uploaded = gpu::upload_block_mask(m);
  EXPECT_EQ(built.nnz, uploaded.nnz);
  EXPECT_EQ(copy_to_host(built.kv_entry), copy_to_host(uploaded.kv_entry));
  EXPECT_EQ(copy_to_host(built.q_col_idx), copy_to_host(uploaded.q_col_idx));
}

// The config is validated before any CUDA call: this test runs (and must pass) without a device too.
TEST(GpuAttentionPattern, BadConfigThrowsLikeTheCpuBuilder) {
  auto c = make_pattern(AttnPatternKind::kLocal, true, 16);
  c.window = -1;
  EXPECT_THROW(gpu::build_block_mask_on_device(c, 64, 0, nullptr), UsageError);
  c = make_pattern(AttnPatternKind::kRandom, false, 0);
  EXPECT_THROW(gpu::build_block_mask_on_device(c, 64, 0, nullptr), UsageError);
  EXPECT_THROW(gpu::build_block_mask_on_device(make_pattern(AttnPatternKind::kDense, true, 16), 0, 0, nullptr), Error);
  EXPECT_THROW(gpu::build_block_mask_on_device(make_pattern(AttnPatternKind::kDense, true, 16), 64, -1, nullptr), Error);
}

}  // namespace
}  // namespace smt
