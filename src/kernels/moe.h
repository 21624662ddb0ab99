// Mixture-of-Experts routing on the CPU: router softmax + top-k, the routing plan (which
// assignment goes to which expert row, capacity dropping), token permutation into
// expert-contiguous rows and back, and the experts' FFN over those rows.
//
// Names: T tokens, E experts, k = top_k, d model dim, f expert hidden dim,
// an "assignment" is (token t, slot j) with j < k; R = number of kept assignments.
// Ops are templates over the scalar (instantiated for float and double); RoutingPlan is not.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

namespace smt::cpu {

// probs [T,E] = softmax(logits) in the Real type (fp32 for float); topk_idx [T,k] the k largest (ties:
// lower expert index first), in descending probability; topk_weight [T,k] = probs of those renormalised
// to sum 1; lse [T] = logsumexp(logits) (router z-loss; nullable).
template <typename Real>
void router_topk_forward(Real* probs, int32_t* topk_idx, Real* topk_weight, std::type_identity_t<Real>* lse,
                         const Real* logits, int64_t T, int64_t E, int64_t k);
// dlogits += d/dlogits of: sum(dtopk_weight * topk_weight) + sum(dprobs * probs) + sum(dlse * lse).
// dtopk_weight, dprobs, dlse nullable. (topk_weight is not read: the weights are recomputed from probs.)
template <typename Real>
void router_topk_backward(Real* dlogits, const std::type_identity_t<Real>* dtopk_weight,
                          const std::type_identity_t<Real>* dprobs, const std::type_identity_t<Real>* dlse,
                          const Real* probs, const int32_t* topk_idx, const Real* topk_weight, int64_t T,
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
// Computed as std::ceil(((c * T) * k) / E) in double (the formula's left-to-right order); at least 1
// when c > 0, so a positive factor never means dropless. Throws smt::Error for c < 0.
int64_t expert_capacity(double capacity_factor, int64_t T, int64_t E, int64_t k);
// Throws smt::Error if an index is outside [0, E).
// num_routed_before [E] (nullable = zeros): assignments to each expert that come before these T
// tokens in the global (token, slot) order, on lower data-parallel ranks; with capacity > 0 an
// expert then keeps only its first capacity - num_routed_before[e] assignments here, so capacity
// is counted per expert over the whole global batch exactly as in one process.
RoutingPlan build_routing_plan(const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, int64_t capacity,
                               const int64_t* num_routed_before = nullptr);

// rows [R, d]: rows[r] = x[token_of_row[r]]
template <typename Real>
void permute_forward(Real* rows, const Real* x, const RoutingPlan& plan, int64_t d);
// dx[token_of_row[r]] += drows[r]
template <typename Real>
void permute_backward(Real* dx, const Real* drows, const RoutingPlan& plan, int64_t d);
// y[t] += sum over kept slots j of topk_weight[t,j] * rows_out[row(t,j)]   (y accumulated)
template <typename Real>
void unpermute_forward(Real* y, const Real* rows_out, const Real* topk_weight, const RoutingPlan& plan, int64_t d);
// drows_out[r] += w * dy[t] ; dtopk_weight[t,j] += dot(dy[t], rows_out[r]) (dropped slots get 0). Both nullable.
template <typename Real>
void unpermute_backward(std::type_identity_t<Real>* drows_out, std::type_identity_t<Real>* dtopk_weight,
                        const Real* dy, const Real* rows_out, const Real* topk_weight, const RoutingPlan& plan,
                        int64_t d);

// Experts' FFN on expert-contiguous rows, expert e owning rows [offset[e], offset[e+1]):
//   hidden_pre = rows @ w1[e] + b1[e] ; hidden = gelu(hidden_pre) ; out = hidden @ w2[e] + b2[e]
// Shapes: rows, out [R, d]; hidden_pre, hidden [R, f]; w1 [E, d, f]; b1 [E, f]; w2 [E, f, d]; b2 [E, d].
// expert_row_offset [E+1] (here E = experts held locally). Experts with no rows are skipped.
// b1, b2 nullable (no bias).
template <typename Real>
void experts_forward(Real* out, Real* hidden_pre, Real* hidden, const Real* rows, const Real* w1,
                     const std::type_identity_t<Real>* b1, const Real* w2, const std::type_identity_t<Real>* b2,
                     const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f);
// drows, dw1, db1, dw2, db2 += ... (each nullable). scratch [R, f] is working memory (holds dhidden).
template <typename Real>
void experts_backward(std::type_identity_t<Real>* drows, std::type_identity_t<Real>* dw1,
                      std::type_identity_t<Real>* db1, std::type_identity_t<Real>* dw2,
                      std::type_identity_t<Real>* db2, Real* scratch, const Real* dout, const Real* rows,
                      const Real* hidden_pre, const Real* hidden, const Real* w1, const Real* w2,
                      const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f);

}  // namespace smt::cpu
