// Moving MoE rows between the ranks of an expert-parallel group (dispatch and combine).
//
// Source side: a rank's routing plan holds its kept assignments as rows grouped by global expert
// (all of expert 0's rows first). The rows for group member q's experts [q*El, (q+1)*El) are one
// contiguous range of the plan, so they go out as one block of one all-to-all-v.
// Owner side: rows are received straight into expert-major order (local expert 0's rows from every
// source, then local expert 1's ...), one segment per (source, expert), so the expert FFN reads them
// without a reordering copy. Within one expert the order is (source member, source row), which is
// the global (token, slot) order, as in one process.
// Backward: to_experts() carries d(rows_out) to the owners and from_experts() brings d(rows) back,
// the same two moves as the forward.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace smt {

class ExpertExchange {
 public:
  ExpertExchange() = default;
  // Collective over `group` (size P dividing E): exchanges every member's rows per expert.
  ExpertExchange(Communicator& group, const std::vector<int64_t>& num_rows_per_expert);
  // The same with the row counts gathered over `count_group` (host memory) and the rows moved over
  // `row_group` (e.g. NCCL on device buffers): two communicators over the same ranks in the same order.
  ExpertExchange(Communicator& count_group, Communicator& row_group, const std::vector<int64_t>& num_rows_per_expert);

  int64_t num_plan_rows() const { return num_plan_rows_; }        // rows of this rank's plan
  int64_t num_expert_rows() const { return num_expert_rows_; }    // rows this rank's experts process
  // [El+1] offsets of each local expert's rows in the expert-major buffer.
  const std::vector<int64_t>& local_expert_row_offset() const { return local_expert_row_offset_; }
  int64_t rows_sent_to_others() const;      // plan rows this rank sends to other members
  int64_t rows_received_from_others() const;

  // plan_rows [num_plan_rows, d] -> expert_rows [num_expert_rows, d] on the owners. Collective.
  void to_experts(const float* plan_rows, float* expert_rows, int64_t d);
  // expert_rows [num_expert_rows, d] -> plan_rows [num_plan_rows, d] back on the sources. Collective.
  void from_experts(const float* expert_rows, float* plan_rows, int64_t d);

 private:
  Communicator* group_ = nullptr;  // moves the rows
  int num_members_ = 1, me_ = 0;
  int64_t num_experts_ = 0, num_local_experts_ = 0;
  std::vector<int64_t> rows_;                     // [P, E] rows member s routes to expert e
  std::vector<int64_t> send_rows_, recv_rows_;    // [P] rows to / from each member
  std::vector<int64_t> local_expert_row_offset_;  // [El+1]
  int64_t num_plan_rows_ = 0, num_expert_rows_ = 0;
  // In rows: plan side, one segment per (owner q, q's local expert e), in that order;
  // expert side, one segment per (source s, local expert e), in that order.
  std::vector<Segment> plan_segments_, expert_segments_;
  std::vector<Segment> sends_, recvs_;  // scaled by d for one call

  void move(const float* src, const std::vector<Segment>& src_rows, float* dst, const std::vector<Segment>& dst_rows,
            int64_t d);
};

}  // namespace smt
