// Time per named phase of a training step, summed over the timed steps (the host side of the
// GPU phase timer, core/gpu_phase_timer.h; plain data so it is tested without a GPU). Phases keep
// the order in which they were first seen, which is the order of the step's work.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace smt {

class PhaseTotals {
 public:
  struct Phase {
    std::string name;
    double total_ms = 0;     // over all timed steps
    int64_t intervals = 0;   // intervals added (a per-layer phase adds one per layer and step)
  };
  void add(std::string_view name, double ms);  // ms >= 0 and finite
  void end_step() { ++steps_; }
  int64_t steps() const { return steps_; }
  const std::vector<Phase>& phases() const { return phases_; }
  double step_ms() const;  // mean over the timed steps of the sum of all phases
  // {"name": mean ms per step, ...} in phase order (empty object before the first step).
  std::string json() const;
  // One line per phase: name, mean ms per step, share of the step; then the total.
  std::string table() const;

 private:
  std::vector<Phase> phases_;
  int64_t steps_ = 0;
};

}  // namespace smt
