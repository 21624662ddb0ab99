// The routing plan built on the device from the router's top-k choices, and the router's loss
// gradients (load-balance and z-loss) written by one kernel: no per-layer round trip of [T, k] or
// [T, E] arrays through the host. The plan is the CPU's build_routing_plan exactly: rows grouped by
// expert in ascending expert order, inside an expert in (token, slot) order, and with a capacity an
// expert keeps its first `capacity` assignments in that order. One small device-to-host copy per call
// brings the per-expert counts to the host (the grouped GEMM needs the group sizes there).
#include "kernels/cuda/common.cuh"
#include "kernels/gpu_ops.h"

namespace smt::gpu {
namespace {

constexpr int kRankThreads = 1024;

// One block per expert e: rank[a] = number of assignments a' < a with topk[a'] == e, for the
// assignments of e (every assignment belongs to one expert, so the writes never collide).
// routed[e] = all assignments of e; routed[E] (block 0) = assignments whose index is outside [0, E).
__global__ void __launch_bounds__(kRankThreads) rank_in_expert_kernel(int32_t* rank, int64_t* routed, const int32_t* topk, int64_t A, int E) {
  __shared__ int warp_counts[kRankThreads / 32];
  const int e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  int64_t base = 0, bad = 0;
  for (int64_t start = 0; start < A; start += blockDim.x) {
    const int64_t a = start + threadIdx.x;
    const int32_t ex = a < A ? topk[a] : 0;
    const bool mine = a < A && ex == e;
    if (e == 0 && a < A && (ex < 0 || ex >= E)) ++bad;
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u)), chunk_total = 0;
    for (int w = 0; w < num_warps; ++w) {
      const int c = warp_counts[w];
      before += w < warp ? c : 0;
      chunk_total += c;
    }
    if (mine) rank[a] = static_cast<int32_t>(base + before);
    base += chunk_total;
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
  if (threadIdx.x == 0) routed[e] = base;
  if (e == 0) {
    bad = detail::warp_sum(bad);
    if (lane == 0 && bad > 0) atomicAdd(reinterpret_cast<unsigned long long*>(routed + E), static_cast<unsigned long long>(bad));
  }
}

__global__ void place_rows_kernel(int64_t* row_of_assignment, int64_t* token_of_row, const int32_t* rank,
                                  const int32_t* topk, const int64_t* expert_row_offset, int64_t A, int k) {
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < A; a += int64_t(gridDim.x) * blockDim.x) {
    const int e = topk[a];
    const int64_t r_in_expert = rank[a];
    if (r_in_expert < expert_row_offset[e + 1] - expert_row_offset[e]) {
      const int64_t r = expert_row_offset[e] + r_in_expert;
      row_of_assignment[a] = r;
      token_of_row[r] = a / k;
    } else {
      row_of_assignment[a] = -1;  // over capacity: dropped
    }
  }
}

struct ExpertScalars {
  float v[64];
};

__global__ void router_loss_grads_kernel(float* d_probs, float* d_lse, const float* lse, ExpertScalars d_prob_of_expert,
                                         double z_coeff, int64_t T, int64_t num_tokens_global, int E) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * E; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / E;
    d_probs[i] = d_prob_of_expert.v[i - t * E];
    if (i - t * E == 0) d_lse[t] = static_cast<float>(z_coeff * 2.0 * static_cast<double>(lse[t]) / static_cast<double>(num_tokens_global));
  }
}

template <typename T>
void ensure_size(DeviceBuffer<T>& b, size_t n) {
  if (b.size() < n) b = DeviceBuffer<T>(n);
}

}  // namespace

void count_routing_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             cudaStream_t stream) {
  SMT_CHECK(T >= 0 && E >= 1 && E <= 64 && k >= 1 && k <= E, "count_routing_on_device: bad sizes T=", T, " E=", E,
            " k=", k);
  const int64_t A = T * k;
  SMT_CHECK(A < (int64_t{1} << 31), "count_routing_on_device: ", A, " assignments exceed int32 ranks");
  plan.num_tokens = T;
  plan.num_experts = E;
  plan.top_k = k;
  ensure_size(plan.rank_in_expert, static_cast<size_t>(std::max<int64_t>(A, 1)));
  ensure_size(plan.routed_counts, static_cast<size_t>(E + 1));
  SMT_CUDA_CHECK(cudaMemsetAsync(plan.routed_counts.data(), 0, (E + 1) * sizeof(int64_t), stream));
  rank_in_expert_kernel<<<static_cast<unsigned>(E), kRankThreads, 0, stream>>>(
      plan.rank_in_expert.data(), plan.routed_counts.data(), topk_idx, A, static_cast<int>(E));
  SMT_CUDA_CHECK_LAUNCH();
  std::vector<int64_t> routed(static_cast<size_t>(E + 1));
  SMT_CUDA_CHECK(cudaMemcpyAsync(routed.data(), plan.routed_counts.data(), (E + 1) * sizeof(int64_t),
                                 cudaMemcpyDeviceToHost, stream));
  SMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  SMT_CHECK(routed[E] == 0, "count_routing_on_device: ", routed[E], " expert indices outside [0, ", E, ")");
  plan.num_routed_per_expert_host.assign(routed.begin(), routed.begin() + E);
}

void place_routing_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t capacity,
                             const int64_t* num_routed_before, cudaStream_t stream) {
  const int64_t E = plan.num_experts, k = plan.top_k, A = plan.num_tokens * k;
  SMT_CHECK(static_cast<int64_t>(plan.num_routed_per_expert_host.size()) == E && E >= 1,
            "place_routing_on_device: call count_routing_on_device first");
  SMT_CHECK(capacity >= 0, "place_routing_on_device: capacity must be >= 0, got ", capacity);
  ensure_size(plan.row_of_assignment, static_cast<size_t>(std::max<int64_t>(A, 1)));
  ensure_size(plan.token_of_row, static_cast<size_t>(std::max<int64_t>(A, 1)));
  ensure_size(plan.expert_row_offset, static_cast<size_t>(E + 1));
  plan.num_tokens_per_expert_host.assign(static_cast<size_t>(E), 0);
  plan.expert_row_offset_host.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t routed = plan.num_routed_per_expert_host[e];
    const int64_t before = num_routed_before != nullptr ? num_routed_before[e] : 0;
    SMT_CHECK(before >= 0, "place_routing_on_device: negative num_routed_before for expert ", e);
    const int64_t room = std::max<int64_t>(0, capacity - before);
    plan.num_tokens_per_expert_host[e] = capacity > 0 ? std::min(routed, room) : routed;
    plan.expert_row_offset_host[e + 1] = plan.expert_row_offset_host[e] + plan.num_tokens_per_expert_host[e];
  }
  plan.num_rows = plan.expert_row_offset_host[E];
  // expert_row_offset_host is not touched again before the next count_routing_on_device on this plan,
  // which synchronises the stream first: the asynchronous copy reads it in time.
  SMT_CUDA_CHECK(cudaMemcpyAsync(plan.expert_row_offset.data(), plan.expert_row_offset_host.data(),
                                 (E + 1) * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
  if (A > 0) {
    place_rows_kernel<<<detail::grid_for(A), detail::kThreads, 0, stream>>>(
        plan.row_of_assignment.data(), plan.token_of_row.data(), plan.rank_in_expert.data(), topk_idx,
        plan.expert_row_offset.data(), A, static_cast<int>(k));
    SMT_CUDA_CHECK_LAUNCH();
  }
}

void build_routing_plan_on_device(DeviceRoutingPlan& plan, const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                                  int64_t capacity, cudaStream_t stream) {
  count_routing_on_device(plan, topk_idx, T, E, k, stream);
  place_routing_on_device(plan, topk_idx, capacity, /*num_routed_before=*/nullptr, stream);
}

void router_loss_grads(float* d_probs, float* d_lse, const float* lse, const std::vector<int64_t>& num_routed_per_expert,
                       double aux_scale, double z_coeff, int64_t T, int64_t num_tokens_global, int64_t E,
                       cudaStream_t stream) {
  SMT_CHECK(E >= 1 && E <= 64 && static_cast<int64_t>(num_routed_per_expert.size()) == E,
            "router_loss_grads: bad expert count ", E);
  SMT_CHECK(num_tokens_global >= T, "router_loss_grads: ", num_tokens_global, " global tokens < ", T, " local");
  if (T <= 0) return;
  ExpertScalars s{};
  for (int64_t e = 0; e < E; ++e) s.v[e] = static_cast<float>(aux_scale * static_cast<double>(num_routed_per_expert[e]));
  router_loss_grads_kernel<<<detail::grid_for(T * E), detail::kThreads, 0, stream>>>(d_probs, d_lse, lse, s, z_coeff, T,
                                                                                     num_tokens_global, static_cast<int>(E));
  SMT_CUDA_CHECK_LAUNCH();
}

}  // namespace smt::gpu
