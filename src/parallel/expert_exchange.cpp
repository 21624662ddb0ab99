// Dispatch/combine of MoE rows over an expert-parallel group (see expert_exchange.h).
#include "parallel/expert_exchange.h"

#include <cstring>

#include "core/error.h"

namespace smt {

ExpertExchange::ExpertExchange(Communicator& group, const std::vector<int64_t>& num_rows_per_expert)
    : group_(&group), num_members_(group.size()), me_(group.rank()) {
  const int P = num_members_;
  const int64_t E = static_cast<int64_t>(num_rows_per_expert.size());
  SMT_CHECK(E % P == 0, "expert exchange: ", P, " ranks do not divide ", E, " experts");
  num_experts_ = E;
  num_local_experts_ = E / P;
  const int64_t El = num_local_experts_;
  rows_.assign(static_cast<size_t>(P * E), 0);
  group.all_gather(num_rows_per_expert.data(), rows_.data(), E * static_cast<int64_t>(sizeof(int64_t)));
  send_rows_.assign(P, 0);
  recv_rows_.assign(P, 0);
  local_expert_row_offset_.assign(El + 1, 0);
  for (int q = 0; q < P; ++q)
    for (int64_t e = q * El; e < (q + 1) * El; ++e) send_rows_[q] += rows_[me_ * E + e];
  for (int s = 0; s < P; ++s)
    for (int64_t e = 0; e < El; ++e) recv_rows_[s] += rows_[s * E + me_ * El + e];
  for (int64_t e = 0; e < El; ++e) {
    int64_t n = 0;
    for (int s = 0; s < P; ++s) n += rows_[s * E + me_ * El + e];
    local_expert_row_offset_[e + 1] = local_expert_row_offset_[e] + n;
  }
  for (int q = 0; q < P; ++q) num_plan_rows_ += send_rows_[q];
  num_expert_rows_ = local_expert_row_offset_[El];
}

int64_t ExpertExchange::rows_sent_to_others() const {
  int64_t n = 0;
  for (int q = 0; q < num_members_; ++q)
    if (q != me_) n += send_rows_[q];
  return n;
}

int64_t ExpertExchange::rows_received_from_others() const {
  int64_t n = 0;
  for (int s = 0; s < num_members_; ++s)
    if (s != me_) n += recv_rows_[s];
  return n;
}

void ExpertExchange::reorder(float* dst, const float* src, int64_t d, bool to_expert_major) const {
  const int P = num_members_;
  const int64_t E = num_experts_, El = num_local_experts_;
  // Source-major: member s's block starts at source_start; within it, local expert e's rows follow
  // those of local experts < e. Expert-major: local expert e's rows start at local_expert_row_offset_[e],
  // sources in order.
  std::vector<int64_t> expert_fill(local_expert_row_offset_.begin(), local_expert_row_offset_.end() - 1);
  int64_t source_pos = 0;
  for (int s = 0; s < P; ++s)
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = rows_[s * E + me_ * El + e];
      const int64_t expert_pos = expert_fill[e];
      expert_fill[e] += n;
      const size_t bytes = static_cast<size_t>(n * d) * sizeof(float);
      if (bytes == 0) continue;
      if (to_expert_major) std::memcpy(dst + expert_pos * d, src + source_pos * d, bytes);
      else std::memcpy(dst + source_pos * d, src + expert_pos * d, bytes);
      source_pos += n;
    }
}

void ExpertExchange::to_experts(const float* plan_rows, float* expert_rows, int64_t d) {
  SMT_CHECK(group_ != nullptr, "expert exchange used before construction");
  const int P = num_members_;
  send_counts_.assign(P, 0);
  recv_counts_.assign(P, 0);
  for (int q = 0; q < P; ++q) {
    send_counts_[q] = send_rows_[q] * d;
    recv_counts_[q] = recv_rows_[q] * d;
  }
  source_major_.resize(static_cast<size_t>(num_expert_rows_ * d));
  group_->all_to_all_v(plan_rows, send_counts_.data(), source_major_.data(), recv_counts_.data());
  reorder(expert_rows, source_major_.data(), d, /*to_expert_major=*/true);
}

void ExpertExchange::from_experts(const float* expert_rows, float* plan_rows, int64_t d) {
  SMT_CHECK(group_ != nullptr, "expert exchange used before construction");
  const int P = num_members_;
  send_counts_.assign(P, 0);
  recv_counts_.assign(P, 0);
  for (int q = 0; q < P; ++q) {
    send_counts_[q] = recv_rows_[q] * d;
    recv_counts_[q] = send_rows_[q] * d;
  }
  source_major_.resize(static_cast<size_t>(num_expert_rows_ * d));
  reorder(source_major_.data(), expert_rows, d, /*to_expert_major=*/false);
  group_->all_to_all_v(source_major_.data(), send_counts_.data(), plan_rows, recv_counts_.data());
}

}  // namespace smt
