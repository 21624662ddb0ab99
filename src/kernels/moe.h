// Mixture-of-Experts routing on the CPU: router softmax + top-k, the routing plan (which
// assignment goes to which expert row, capacity dropping), token permutation into
// expert-contiguous rows and back, and the experts' FFN over those rows.
//
// Names: T tokens, E experts, k = top_k, d model dim, f expert hidden dim,
// an "assignment" is (token t, slot j) with j < k; R = number of kept assignments.
#pragma once
#include <cstdint>
#include <vector>

namespace smt::cpu {

// probs [T,E] = softmax(logits) in fp32; topk_idx [T,k] the k largest (ties: lower expert index
// first), in descending probability; topk_weight [T,k] = probs of those renormalised to sum 1;
// lse [T] = logsumexp(logits) (router z-loss).
void router_topk_forward(float* probs, int32_t* topk_idx, float* topk_weight, float* lse, const float* logits,
                         int64_t T, int64_t E, int64_t k);
// dlogits += d/dlogits of: sum(dtopk_weight * topk_weight) + sum(dprobs * probs) + sum(dlse * lse).
// dprobs, dlse nullable.
void router_topk_backward(float* dlogits, const float* dtopk_weight, const float* dprobs, const float* dlse,
                          const float* probs, const int32_t* topk_idx, const float* topk_weight, int64_t T,
                          int64_t E, int64_t k);

// Where every assignment goes. Rows are grouped by expert (expert 0's rows first); within an
// expert, assignments in order of (token, slot). With capacity > 0 an expert keeps its first
// `capacity` assignments in that order and drops the rest (row -1).
struct RoutingPlan {
  int64_t num_tokens = 0, num_experts = 0, top_k = 0;
  int64_t capacity = 0;                          // 0 = dropless
  std::vector<int64_t> num_tokens_per_expert;    // [E] kept assignments per expert
  std::vector<int64_t> num_routed_per_expert;    // [E] before dropping
  std::vector<int64_t> expert_row_offset;        // [E+1] prefix sum of num_tokens_per_expert
  std::vector<int64_t> row_of_assignment;        // [T*k] row index, or -1 if dropped
  std::vector<int64_t> token_of_row;             // [R]
  std::vector<int64_t> assignment_of_row;        // [R] t*k + j
  int64_t num_rows() const { return static_cast<int64_t>(token_of_row.size()); }
  int64_t num_dropped() const;
};

// capacity_factor c: 0 = dropless; else capacity = ceil(c * T * k / E).
int64_t expert_capacity(double capacity_factor, int64_t T, int64_t E, int64_t k);
RoutingPlan build_routing_plan(const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, int64_t capacity);

// rows [R, d]: rows[r] = x[token_of_row[r]]
void permute_forward(float* rows, const float* x, const RoutingPlan& plan, int64_t d);
// dx[token_of_row[r]] += drows[r]
void permute_backward(float* dx, const float* drows, const RoutingPlan& plan, int64_t d);
// y[t] += sum over kept slots j of topk_weight[t,j] * rows_out[row(t,j)]   (y accumulated)
void unpermute_forward(float* y, const float* rows_out, const float* topk_weight, const RoutingPlan& plan,
                       int64_t d);
// drows_out[r] += w * dy[t] ; dtopk_weight[t,j] += dot(dy[t], rows_out[r]) (dropped slots get 0)
void unpermute_backward(float* drows_out, float* dtopk_weight, const float* dy, const float* rows_out,
                        const float* topk_weight, const RoutingPlan& plan, int64_t d);

// Experts' FFN on expert-contiguous rows, expert e owning rows [offset[e], offset[e+1]):
//   hidden_pre = rows @ w1[e] + b1[e] ; hidden = gelu(hidden_pre) ; out = hidden @ w2[e] + b2[e]
// Shapes: rows, out [R, d]; hidden_pre, hidden [R, f]; w1 [E, d, f]; b1 [E, f]; w2 [E, f, d]; b2 [E, d].
// expert_row_offset [E+1] (here E = experts held locally).
void experts_forward(float* out, float* hidden_pre, float* hidden, const float* rows, const float* w1,
                     const float* b1, const float* w2, const float* b2, const int64_t* expert_row_offset,
                     int64_t E, int64_t d, int64_t f);
// drows, dw1, db1, dw2, db2 += ... (drows nullable). scratch [R, f] is working memory.
void experts_backward(float* drows, float* dw1, float* db1, float* dw2, float* db2, float* scratch,
                      const float* dout, const float* rows, const float* hidden_pre, const float* hidden,
                      const float* w1, const float* w2, const int64_t* expert_row_offset, int64_t E, int64_t d,
                      int64_t f);

}  // namespace smt::cpu
