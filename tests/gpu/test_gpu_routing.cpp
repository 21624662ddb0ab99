// The routing plan built on the device against cpu::build_routing_plan (exact: integer plan), and
// the router's loss gradients against the CPU model's float conversions (exact). Random top-k choices
// with skewed experts (so a capacity drops some), dropless and with capacities, and buffer reuse
// between calls of different sizes.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/device_buffer.h"
#include "core/rng.h"
#include "gpu_test_env.h"
#include "kernels/gpu_ops.h"
#include "kernels/moe.h"

namespace {

using smt::DeviceBuffer;

template <typename T>
std::vector<T> first_n(const DeviceBuffer<T>& d, int64_t n) {
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0) EXPECT_EQ(cudaMemcpy(out.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

// Distinct experts per token (as top-k gives), drawn with a skew toward low expert indices.
std::vector<int32_t> random_topk(int64_t T, int E, int k, uint64_t seed) {
  smt::Rng rng(seed, 0);
  std::vector<int32_t> topk(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int e;
      bool again;
      do {
        const int a = static_cast<int>(rng.below(static_cast<uint64_t>(E)));
        const int b = static_cast<int>(rng.below(static_cast<uint64_t>(E)));
        e = std::min(a, b);  // skewed
        again = false;
        for (int i = 0; i < j; ++i) again = again || topk[t * k + i] == e;
      } while (again);
      topk[t * k + j] = e;
    }
  }
  return topk;
}

TEST(GpuRouting, DevicePlanEqualsCpuPlan) {
  std::string why;
  if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  cudaStream_t s = nullptr;
  smt::gpu::DeviceRoutingPlan plan;  // reused across the cases: buffers grow and shrink in use
  struct Case { int64_t T; int E, k; double capacity_factor; };
  const Case cases[] = {{3000, 8, 2, 0.0}, {3000, 8, 2, 1.0}, {517, 8, 2, 0.5}, {4096, 16, 4, 1.25},
                        {1, 8, 2, 1.0},   {2500, 1, 1, 0.0},  {0, 8, 2, 0.0}};
  uint64_t seed = 11;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " E=" << c.E << " k=" << c.k << " c=" << c.capacity_factor);
    const auto topk = random_topk(c.T, c.E, c.k, seed++);
    const int64_t capacity = smt::cpu::expert_capacity(c.capacity_factor, c.T, c.E, c.k);
    const smt::cpu::RoutingPlan ref = smt::cpu::build_routing_plan(topk.data(), c.T, c.E, c.k, capacity);
    DeviceBuffer<int32_t> d_topk = smt::copy_to_device(topk);
    smt::gpu::build_routing_plan_on_device(plan, d_topk.data(), c.T, c.E, c.k, capacity, s);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(plan.num_rows, ref.num_rows());
    EXPECT_EQ(plan.expert_row_offset_host, ref.expert_row_offset);
    EXPECT_EQ(plan.num_tokens_per_expert_host, ref.num_tokens_per_expert);
    EXPECT_EQ(plan.num_routed_per_expert_host, ref.num_routed_per_expert);
    EXPECT_EQ(first_n(plan.expert_row_offset, c.E + 1), ref.expert_row_offset);
    EXPECT_EQ(first_n(plan.row_of_assignment, c.T * c.k), ref.row_of_assignment);
    EXPECT_EQ(first_n(plan.token_of_row, ref.num_rows()), ref.token_of_row);
    if (capacity > 0 && c.T > 100) EXPECT_GT(ref.num_dropped(), 0) << "the skew should make the capacity drop";
  }
}

// A rank's share of a global batch: lower ranks' assignments come first, so with a capacity an expert
// keeps only capacity - num_routed_before[e] of this rank's (none once the lower ranks filled it).
TEST(GpuRouting, DevicePlanWithLowerRanksBeforeEqualsCpuPlan) {
  std::string why;
  if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  cudaStream_t s = nullptr;
  smt::gpu::DeviceRoutingPlan plan;
  const int64_t T = 1500, E = 8, k = 2;
  const auto topk = random_topk(T, E, k, 77);
  const int64_t capacity = smt::cpu::expert_capacity(1.0, 4 * T, E, k);  // this rank is one of four
  const std::vector<int64_t> before = {0, capacity, capacity + 9, capacity - 5, 100, 2 * capacity / 3, 1, 0};
  const smt::cpu::RoutingPlan ref = smt::cpu::build_routing_plan(topk.data(), T, E, k, capacity, before.data());
  DeviceBuffer<int32_t> d_topk = smt::copy_to_device(topk);
  smt::gpu::count_routing_on_device(plan, d_topk.data(), T, E, k, s);
  EXPECT_EQ(plan.num_routed_per_expert_host, ref.num_routed_per_expert);
  smt::gpu::place_routing_on_device(plan, d_topk.data(), capacity, before.data(), s);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(plan.num_rows, ref.num_rows());
  EXPECT_EQ(plan.num_tokens_per_expert_host, ref.num_tokens_per_expert);
  EXPECT_EQ(plan.num_tokens_per_expert_host[1], 0) << "lower ranks filled expert 1";
  EXPECT_EQ(first_n(plan.expert_row_offset, E + 1), ref.expert_row_offset);
  EXPECT_EQ(first_n(plan.row_of_assignment, T * k), ref.row_of_assignment);
  EXPECT_EQ(first_n(plan.token_of_row, ref.num_rows()), ref.token_of_row);
}

TEST(GpuRouting, BadExpertIndexIsRefused) {
  std::string why;
  if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  std::vector<int32_t> topk = {0, 1, 2, 9};  // 9 >= E
  DeviceBuffer<int32_t> d_topk = smt::copy_to_device(topk);
  smt::gpu::DeviceRoutingPlan plan;
  EXPECT_THROW(smt::gpu::build_routing_plan_on_device(plan, d_topk.data(), 2, 8, 2, 0, nullptr), smt::Error);
}

TEST(GpuRouting, RouterLossGradsMatchHostFormula) {
  std::string why;
  if (!gpu_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const int64_t T = 777, E = 8;
  smt::Rng rng(5, 0);
  std::vector<float> lse(T);
  for (auto& v : lse) v = static_cast<float>(rng.uniform() * 6.0 - 1.0);
  const std::vector<int64_t> routed = {300, 0, 17, 250, 99, 400, 254, 234};
  const double aux_scale = 1e-2 * E / (2.0 * T * T), z_coeff = static_cast<double>(1e-3f);
  DeviceBuffer<float> d_lse_in = smt::copy_to_device(lse), d_probs(T * E), d_lse(T);
  const int64_t Tg = 3 * T + 5;  // the global batch's tokens (this rank's T are a part)
  smt::gpu::router_loss_grads(d_probs.data(), d_lse.data(), d_lse_in.data(), routed, aux_scale, z_coeff, T, Tg, E,
                              nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto probs = first_n(d_probs, T * E), dl = first_n(d_lse, T);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e)
      ASSERT_EQ(probs[t * E + e], static_cast<float>(aux_scale * routed[e])) << t << "," << e;
    ASSERT_EQ(dl[t], static_cast<float>(z_coeff * 2.0 * lse[t] / Tg)) << t;
  }
}

}  // namespace
