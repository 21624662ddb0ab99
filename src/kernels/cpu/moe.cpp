// MoE routing on the CPU: router softmax + top-k (fwd/bwd), expert capacity, the routing plan,
// token permutation into expert-contiguous rows and back, and the experts' FFN (grouped GEMMs
// through linear_forward/backward, GELU in between).
// Invariants: rows grouped by expert, within an expert by (token, slot); capacity keeps the first
// `capacity` of each expert in that order. Variants: float and double for every op.
#include "kernels/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"

namespace smt::cpu {

template <typename Real>
void router_topk_forward(Real* probs, int32_t* topk_idx, Real* topk_weight, std::type_identity_t<Real>* lse,
                         const Real* logits, int64_t T, int64_t E, int64_t k) {
  SMT_CHECK(E >= 1 && k >= 1 && k <= E, "router_topk: need 1 <= k <= E, got k=", k, " E=", E);
  parallel_for(
      T,
      [&](int64_t t) {
        const Real* z = logits + t * E;
        Real* p = probs + t * E;
        Real mx = z[0];
        for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
        Real sum = 0;
        for (int64_t e = 0; e < E; ++e) {
          p[e] = std::exp(z[e] - mx);
          sum += p[e];
        }
        const Real inv = Real(1) / sum;
        for (int64_t e = 0; e < E; ++e) p[e] *= inv;
        if (lse != nullptr) lse[t] = mx + std::log(sum);
        int32_t* idx = topk_idx + t * k;
        Real* w = topk_weight + t * k;
        Real selected_sum = 0;
        for (int64_t j = 0; j < k; ++j) {
          int64_t best = -1;
          for (int64_t e = 0; e < E; ++e) {
            bool taken = false;
            for (int64_t l = 0; l < j; ++l) taken = taken || idx[l] == e;
            if (taken) continue;
            if (best < 0 || p[e] > p[best]) best = e;  // strict: ties keep the lower index
          }
          idx[j] = static_cast<int32_t>(best);
          w[j] = p[best];
          selected_sum += p[best];
        }
        for (int64_t j = 0; j < k; ++j) w[j] /= selected_sum;  // division: equal probs give exactly 1/k
      },
      E * (k + 3));
}

template <typename Real>
void router_topk_backward(Real* dlogits, const std::type_identity_t<Real>* dtopk_weight,
                          const std::type_identity_t<Real>* dprobs, const std::type_identity_t<Real>* dlse,
                          const Real* probs, const int32_t* topk_idx, const Real* topk_weight, int64_t T,
                          int64_t E, int64_t k) {
  // w_j = p_{i_j} / S, S = sum_l p_{i_l}:  dL/dp_{i_j} (via w) = (g_j - sum_l g_l w_l) / S.
  // Softmax: dz_e = p_e (dp_e - sum_e' dp_e' p_e'); logsumexp: dz_e = dlse p_e.
  constexpr int64_t kMaxTopK = 64;
  SMT_CHECK(k >= 1 && k <= E && k <= kMaxTopK, "router_topk_backward: need 1 <= k <= min(E, 64), got k=", k,
            " E=", E);
  parallel_for(
      T,
      [&](int64_t t) {
        const Real* p = probs + t * E;
        const int32_t* idx = topk_idx + t * k;
        Real* dz = dlogits + t * E;
        double dot = 0.0;  // sum_e dp_e p_e
        if (dprobs != nullptr) {
          const Real* dp = dprobs + t * E;
          for (int64_t e = 0; e < E; ++e) dot += double(dp[e]) * double(p[e]);
        }
        double contrib[kMaxTopK];
        const bool have_w = dtopk_weight != nullptr;
        const int64_t kk = have_w ? k : 0;
        double S = 0.0, gw = 0.0;
        for (int64_t j = 0; j < kk; ++j) S += double(p[idx[j]]);
        for (int64_t j = 0; j < kk; ++j) gw += double(dtopk_weight[t * k + j]) * double(p[idx[j]]) / S;
        for (int64_t j = 0; j < kk; ++j) {
          contrib[j] = (double(dtopk_weight[t * k + j]) - gw) / S;
          dot += contrib[j] * double(p[idx[j]]);
        }
        const double base = (dlse != nullptr ? double(dlse[t]) : 0.0) - dot;
        if (dprobs != nullptr) {
          const Real* dp = dprobs + t * E;
          for (int64_t e = 0; e < E; ++e) dz[e] += static_cast<Real>(double(p[e]) * (double(dp[e]) + base));
        } else {
          for (int64_t e = 0; e < E; ++e) dz[e] += static_cast<Real>(double(p[e]) * base);
        }
        for (int64_t j = 0; j < kk; ++j) dz[idx[j]] += static_cast<Real>(double(p[idx[j]]) * contrib[j]);
      },
      E * 4);
  (void)topk_weight;
}

int64_t RoutingPlan::num_dropped() const {
  int64_t routed = 0, kept = 0;
  for (int64_t c : num_routed_per_expert) routed += c;
  for (int64_t c : num_tokens_per_expert) kept += c;
  return routed - kept;
}

int64_t expert_capacity(double capacity_factor, int64_t T, int64_t E, int64_t k) {
  SMT_CHECK(capacity_factor >= 0.0, "expert_capacity: capacity factor must be >= 0, got ", capacity_factor);
  SMT_CHECK(E >= 1, "expert_capacity: need E >= 1, got ", E);
  if (capacity_factor == 0.0) return 0;
  const double c = capacity_factor * double(T) * double(k) / double(E);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(c)));
}

RoutingPlan build_routing_plan(const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, int64_t capacity,
                               const int64_t* num_routed_before) {
  SMT_CHECK(T >= 0 && E >= 1 && k >= 1, "build_routing_plan: bad sizes T=", T, " E=", E, " k=", k);
  SMT_CHECK(capacity >= 0, "build_routing_plan: capacity must be >= 0, got ", capacity);
  RoutingPlan plan;
  plan.num_tokens = T;
  plan.num_experts = E;
  plan.top_k = k;
  plan.capacity = capacity;
  plan.num_routed_per_expert.assign(E, 0);
  plan.num_tokens_per_expert.assign(E, 0);
  plan.expert_row_offset.assign(E + 1, 0);
  const int64_t A = T * k;
  for (int64_t a = 0; a < A; ++a) {
    const int32_t e = topk_idx[a];
    SMT_CHECK(e >= 0 && e < E, "build_routing_plan: expert index ", e, " of token ", a / k, " slot ", a % k,
              " is outside [0, ", E, ")");
    ++plan.num_routed_per_expert[e];
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t routed = plan.num_routed_per_expert[e];
    const int64_t before = num_routed_before ? num_routed_before[e] : 0;
    SMT_CHECK(before >= 0, "build_routing_plan: negative num_routed_before for expert ", e);
    const int64_t room = std::max<int64_t>(0, capacity - before);
    plan.num_tokens_per_expert[e] = capacity > 0 ? std::min(routed, room) : routed;
    plan.expert_row_offset[e + 1] = plan.expert_row_offset[e] + plan.num_tokens_per_expert[e];
  }
  const int64_t R = plan.expert_row_offset[E];
  plan.row_of_assignment.assign(A, -1);
  plan.token_of_row.assign(R, 0);
  plan.assignment_of_row.assign(R, 0);
  std::vector<int64_t> filled(E, 0);
  for (int64_t a = 0; a < A; ++a) {  // (token, slot) order
    const int32_t e = topk_idx[a];
    if (filled[e] >= plan.num_tokens_per_expert[e]) continue;  // over capacity: dropped
    const int64_t r = plan.expert_row_offset[e] + filled[e]++;
    plan.row_of_assignment[a] = r;
    plan.token_of_row[r] = a / k;
    plan.assignment_of_row[r] = a;
  }
  return plan;
}

template <typename Real>
void permute_forward(Real* rows, const Real* x, const RoutingPlan& plan, int64_t d) {
  parallel_for(
      plan.num_rows(), [&](int64_t r) { std::memcpy(rows + r * d, x + plan.token_of_row[r] * d, sizeof(Real) * d); },
      d);
}

template <typename Real>
void permute_backward(Real* dx, const Real* drows, const RoutingPlan& plan, int64_t d) {
  const int64_t k = plan.top_k;
  parallel_for(
      plan.num_tokens,
      [&](int64_t t) {
        Real* o = dx + t * d;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = plan.row_of_assignment[t * k + j];
          if (r < 0) continue;
          const Real* g = drows + r * d;
          for (int64_t i = 0; i < d; ++i) o[i] += g[i];
        }
      },
      k * d);
}

template <typename Real>
void unpermute_forward(Real* y, const Real* rows_out, const Real* topk_weight, const RoutingPlan& plan, int64_t d) {
  const int64_t k = plan.top_k;
  parallel_for(
      plan.num_tokens,
      [&](int64_t t) {
        Real* o = y + t * d;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = plan.row_of_assignment[t * k + j];
          if (r < 0) continue;
          const Real w = topk_weight[t * k + j];
          const Real* src = rows_out + r * d;
          for (int64_t i = 0; i < d; ++i) o[i] += w * src[i];
        }
      },
      k * d);
}

template <typename Real>
void unpermute_backward(std::type_identity_t<Real>* drows_out, std::type_identity_t<Real>* dtopk_weight,
                        const Real* dy, const Real* rows_out, const Real* topk_weight, const RoutingPlan& plan,
                        int64_t d) {
  const int64_t k = plan.top_k;
  parallel_for(
      plan.num_tokens,
      [&](int64_t t) {
        const Real* g = dy + t * d;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t r = plan.row_of_assignment[t * k + j];
          if (r < 0) continue;
          if (drows_out != nullptr) {
            const Real w = topk_weight[t * k + j];
            Real* o = drows_out + r * d;
            for (int64_t i = 0; i < d; ++i) o[i] += w * g[i];
          }
          if (dtopk_weight != nullptr) {
            const Real* src = rows_out + r * d;
            Real dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < d; ++i) dot += g[i] * src[i];
            dtopk_weight[t * k + j] += dot;
          }
        }
      },
      2 * k * d);
}

template <typename Real>
void experts_forward(Real* out, Real* hidden_pre, Real* hidden, const Real* rows, const Real* w1,
                     const std::type_identity_t<Real>* b1, const Real* w2, const std::type_identity_t<Real>* b2,
                     const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = expert_row_offset[e], n = expert_row_offset[e + 1] - r0;
    SMT_CHECK(n >= 0, "experts_forward: offsets must be non-decreasing (expert ", e, ")");
    if (n == 0) continue;
    linear_forward(hidden_pre + r0 * f, rows + r0 * d, w1 + e * d * f, b1 ? b1 + e * f : nullptr, n, d, f);
    gelu_forward(hidden + r0 * f, hidden_pre + r0 * f, n * f);
    linear_forward(out + r0 * d, hidden + r0 * f, w2 + e * f * d, b2 ? b2 + e * d : nullptr, n, f, d);
  }
}

template <typename Real>
void experts_backward(std::type_identity_t<Real>* drows, std::type_identity_t<Real>* dw1,
                      std::type_identity_t<Real>* db1, std::type_identity_t<Real>* dw2,
                      std::type_identity_t<Real>* db2, Real* scratch, const Real* dout, const Real* rows,
                      const Real* hidden_pre, const Real* hidden, const Real* w1, const Real* w2,
                      const int64_t* expert_row_offset, int64_t E, int64_t d, int64_t f) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = expert_row_offset[e], n = expert_row_offset[e + 1] - r0;
    SMT_CHECK(n >= 0, "experts_backward: offsets must be non-decreasing (expert ", e, ")");
    if (n == 0) continue;
    Real* dh = scratch + r0 * f;  // dhidden, then dhidden_pre (in place)
    std::fill(dh, dh + n * f, Real(0));
    linear_backward<Real>(dh, dw2 ? dw2 + e * f * d : nullptr, db2 ? db2 + e * d : nullptr, dout + r0 * d,
                          hidden + r0 * f, w2 + e * f * d, n, f, d);
    gelu_backward_inplace(dh, hidden_pre + r0 * f, n * f);
    if (drows == nullptr && dw1 == nullptr && db1 == nullptr) continue;
    linear_backward<Real>(drows ? drows + r0 * d : nullptr, dw1 ? dw1 + e * d * f : nullptr,
                          db1 ? db1 + e * f : nullptr, dh, rows + r0 * d, w1 + e * d * f, n, d, f);
  }
}

#define SMT_INSTANTIATE(Real)                                                                                       \
  template void router_topk_forward<Real>(Real*, int32_t*, Real*, Real*, const Real*, int64_t, int64_t, int64_t);  \
  template void router_topk_backward<Real>(Real*, const Real*, const Real*, const Real*, const Real*,              \
                                           const int32_t*, const Real*, int64_t, int64_t, int64_t);                 \
  template void permute_forward<Real>(Real*, const Real*, const RoutingPlan&, int64_t);                            \
  template void permute_backward<Real>(Real*, const Real*, const RoutingPlan&, int64_t);                           \
  template void unpermute_forward<Real>(Real*, const Real*, const Real*, const RoutingPlan&, int64_t);             \
  template void unpermute_backward<Real>(Real*, Real*, const Real*, const Real*, const Real*, const RoutingPlan&,  \
                                         int64_t);                                                                  \
  template void experts_forward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*, const Real*,     \
                                      const Real*, const int64_t*, int64_t, int64_t, int64_t);                      \
  template void experts_backward<Real>(Real*, Real*, Real*, Real*, Real*, Real*, const Real*, const Real*,         \
                                       const Real*, const Real*, const Real*, const Real*, const int64_t*, int64_t, \
                                       int64_t, int64_t);
SMT_INSTANTIATE(float)
SMT_INSTANTIATE(double)
#undef SMT_INSTANTIATE

}  // namespace smt::cpu
