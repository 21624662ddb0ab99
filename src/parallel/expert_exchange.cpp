// Dispatch/combine of MoE rows over an expert-parallel group (see expert_exchange.h).
#include "parallel/expert_exchange.h"

#include <cstring>

#include "core/error.h"

namespace smt {

ExpertExchange::ExpertExchange(Communicator& group, const std::vector<int64_t>& num_rows_per_expert)
    : ExpertExchange(group, group, num_rows_per_expert) {}

ExpertExchange::ExpertExchange(Communicator& count_group, Communicator& row_group,
                               const std::vector<int64_t>& num_rows_per_expert)
    : group_(&row_group), num_members_(count_group.size()), me_(count_group.rank()) {
  SMT_CHECK(row_group.size() == num_members_ && row_group.rank() == me_, "expert exchange: the row group (rank ",
            row_group.rank(), " of ", row_group.size(), ") differs from the count group (rank ", me_, " of ",
            num_members_, ")");
  Communicator& group = count_group;
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
  int64_t plan_pos = 0;  // the plan's rows are grouped by global expert: q's experts are q*El ... (q+1)*El-1
  for (int q = 0; q < P; ++q)
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = rows_[me_ * E + q * El + e];
      plan_segments_.push_back(Segment{q, plan_pos, n});
      plan_pos += n;
    }
  std::vector<int64_t> expert_fill(local_expert_row_offset_.begin(), local_expert_row_offset_.end() - 1);
  for (int s = 0; s < P; ++s)
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = rows_[s * E + me_ * El + e];
      expert_segments_.push_back(Segment{s, expert_fill[e], n});
      expert_fill[e] += n;
    }
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

void ExpertExchange::move(const float* src, const std::vector<Segment>& src_rows, float* dst,
                          const std::vector<Segment>& dst_rows, int64_t d) {
  SMT_CHECK(group_ != nullptr, "expert exchange used before construction");
  auto scale = [d](const std::vector<Segment>& rows, std::vector<Segment>& floats) {
    floats.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) floats[i] = Segment{rows[i].peer, rows[i].offset * d, rows[i].count * d};
  };
  scale(src_rows, sends_);
  scale(dst_rows, recvs_);
  group_->exchange_segments(src, sends_, dst, recvs_);
}

void ExpertExchange::to_experts(const float* plan_rows, float* expert_rows, int64_t d) {
  move(plan_rows, plan_segments_, expert_rows, expert_segments_, d);
}

void ExpertExchange::from_experts(const float* expert_rows, float* plan_rows, int64_t d) {
  move(expert_rows, expert_segments_, plan_rows, plan_segments_, d);
}

}  // namespace smt
