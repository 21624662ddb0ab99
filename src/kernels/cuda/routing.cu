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

// Each assignment's rank among its expert's assignments (rank[a] = the assignments a' < a of the same
// expert), in three passes over chunks of kRankChunk assignments, so every SM takes part:
//  1. chunk_counts: per chunk and expert, the assignments (shared-memory atomics); out-of-range indices
//     are counted into routed[E];
//  2. chunk_prefix: per expert, the exclusive prefix over the chunks (in place) and the total routed[e];
//  3. chunk_ranks: rank = the chunk's prefix + the lower warps' counts in the chunk + the lower lanes of the
//     thread's warp with the same expert (__match_any_sync).
// Every assignment belongs to one expert, so the rank writes never collide. E <= 64.
constexpr int kRankChunk = 1024;  // = threads per block of passes 1 and 3
constexpr int kMaxRoutingExperts = 64;

__global__ void __launch_bounds__(kRankChunk) chunk_counts_kernel(int64_t* counts, int64_t* routed,
                                                                 const int32_t* topk, int64_t A, int E) {
  __shared__ int s_count[kMaxRoutingExperts];
  __shared__ int s_bad;
  if (threadIdx.x < kMaxRoutingExperts) s_count[threadIdx.x] = 0;
  if (threadIdx.x == 0) s_bad = 0;
  __syncthreads();
  const int64_t a = blockIdx.x * int64_t(kRankChunk) + threadIdx.x;
  if (a < A) {
    const int32_t ex = topk[a];
    if (ex >= 0 && ex < E) atomicAdd(&s_count[ex], 1);
    else atomicAdd(&s_bad, 1);
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < E) counts[blockIdx.x * int64_t(E) + threadIdx.x] = s_count[threadIdx.x];
  if (threadIdx.x == 0 && s_bad > 0)
    atomicAdd(reinterpret_cast<unsigned long long*>(routed + E), static_cast<unsigned long long>(s_bad));
}

// One block of E threads: counts [chunks, E] becomes the exclusive prefix over chunks; routed[e] the total.
__global__ void chunk_prefix_kernel(int64_t* counts, int64_t* routed, int64_t chunks, int E) {
  const int e = threadIdx.x;
  if (e >= E) return;
  int64_t running = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t v = counts[c * E + e];
    counts[c * E + e] = running;
    running += v;
  }
  routed[e] = running;
}

__global__ void __launch_bounds__(kRankChunk) chunk_ranks_kernel(int32_t* rank, const int64_t* prefix,
                                                                const int32_t* topk, int64_t A, int E) {
  __shared__ int s_warp_count[kRankChunk / 32][kMaxRoutingExperts];  // [warp][expert] assignments
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < (kRankChunk / 32) * kMaxRoutingExperts; i += kRankChunk)
    (&s_warp_count[0][0])[i] = 0;
  __syncthreads();
  const int64_t a = blockIdx.x * int64_t(kRankChunk) + threadIdx.x;
  const int32_t ex = a < A ? topk[a] : -1;
  const bool valid = ex >= 0 && ex < E;
  const unsigned same = __match_any_sync(0xffffffffu, valid ? ex : -1);  // lanes with this lane's expert
  const int before_in_warp = __popc(same & ((1u << lane) - 1u));
  if (valid && before_in_warp == 0) s_warp_count[warp][ex] = __popc(same);  // the group's lowest lane
  __syncthreads();
  if (!valid) return;
  int64_t r = prefix[blockIdx.x * int64_t(E) + ex] + before_in_warp;
  for (int w = 0; w < warp; ++w) r += s_warp_count[w][ex];
  rank[a] = static_cast<int32_t>(r);
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
  if (A > 0) {
    const int64_t chunks = (A + kRankChunk - 1) / kRankChunk;
    SMT_CHECK(chunks <= INT32_MAX, "count_routing_on_device: too many assignments");
    StreamBuffer<int64_t> counts(static_cast<size_t>(chunks * E), stream);  // [chunks, E], then the prefix
    chunk_counts_kernel<<<static_cast<unsigned>(chunks), kRankChunk, 0, stream>>>(
        counts.data(), plan.routed_counts.data(), topk_idx, A, static_cast<int>(E));
    SMT_CUDA_CHECK_LAUNCH();
    chunk_prefix_kernel<<<1, kMaxRoutingExperts, 0, stream>>>(counts.data(), plan.routed_counts.data(), chunks,
                                                              static_cast<int>(E));
    SMT_CUDA_CHECK_LAUNCH();
    chunk_ranks_kernel<<<static_cast<unsigned>(chunks), kRankChunk, 0, stream>>>(
        plan.rank_in_expert.data(), counts.data(), topk_idx, A, static_cast<int>(E));
    SMT_CUDA_CHECK_LAUNCH();
  }
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
