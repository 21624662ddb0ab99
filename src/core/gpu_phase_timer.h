// Where the GPU time of a training step goes (train.profile): CUDA events recorded on the model's
// stream between the phases of the step; at the step's end the intervals between consecutive events
// are added to PhaseTotals under the name of the phase they close. An interval is the stream's time
// from the previous mark to this one, so it includes the stream's idle time while the host was busy
// (after a synchronisation, e.g. reading the routing counts): the phases add up to the step's GPU
// time. The events cost a few microseconds of host time each; the timed benchmark runs without them.
#pragma once
#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "core/phase_totals.h"

namespace smt {

class GpuPhaseTimer {
 public:
  explicit GpuPhaseTimer(cudaStream_t stream) : stream_(stream) {}
  ~GpuPhaseTimer();
  GpuPhaseTimer(const GpuPhaseTimer&) = delete;
  GpuPhaseTimer& operator=(const GpuPhaseTimer&) = delete;

  void begin_step();                   // the step's first event (a step still open is discarded)
  void mark(const char* phase);        // the work queued since the previous mark belongs to `phase`
  void end_step();                     // waits for the last event; adds the step's intervals
  const PhaseTotals& totals() const { return totals_; }

 private:
  cudaEvent_t event(size_t i);  // events_[i], created on first use and reused by later steps

  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;    // events_[0] opens the step, events_[i + 1] closes names_[i]
  std::vector<const char*> names_;     // this step's marks (string literals)
  bool open_ = false;
  PhaseTotals totals_;
};

}  // namespace smt
#endif  // SMT_CUDA
