#ifdef SMT_CUDA
#include "core/gpu_phase_timer.h"

#include "core/cuda_check.h"

namespace smt {

GpuPhaseTimer::~GpuPhaseTimer() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t GpuPhaseTimer::event(size_t i) {
  while (events_.size() <= i) {
    cudaEvent_t e = nullptr;
    SMT_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  return events_[i];
}

void GpuPhaseTimer::begin_step() {
  names_.clear();
  SMT_CUDA_CHECK(cudaEventRecord(event(0), stream_));
  open_ = true;
}

void GpuPhaseTimer::mark(const char* phase) {
  if (!open_) return;  // outside a timed step (e.g. an evaluation forward)
  SMT_CUDA_CHECK(cudaEventRecord(event(names_.size() + 1), stream_));
  names_.push_back(phase);
}

void GpuPhaseTimer::end_step() {
  if (!open_) return;
  open_ = false;
  if (names_.empty()) return;
  SMT_CUDA_CHECK(cudaEventSynchronize(events_[names_.size()]));
  for (size_t i = 0; i < names_.size(); ++i) {
    float ms = 0;
    SMT_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
    totals_.add(names_[i], ms);
  }
  totals_.end_step();
}

}  // namespace smt
#endif  // SMT_CUDA
