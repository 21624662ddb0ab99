// What a configuration needs in RAM, estimated from the config alone (double arithmetic: absurd
// sizes cannot overflow), so that `smt train` refuses a run that cannot fit before allocating:
// a config error (exit code 2) that shows the estimate, not a std::bad_alloc deep inside.
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace smt {

struct MemoryEstimate {
  double params = 0;          // parameter count (with the layout's 16-float alignment ignored)
  double param_bytes = 0;     // the parameters (fp32)
  double optimizer_bytes = 0; // gradients + AdamW m and v (3 x parameters)
  double checkpoint_bytes = 0;// the in-memory checkpoint image while saving (3 x parameters)
  double activation_bytes = 0;// kept activations + backward scratch of the largest batch
  double data_bytes = 0;      // tokenized synthetic items (0 for LIAR: bounded by the files)
  double total() const { return param_bytes + optimizer_bytes + checkpoint_bytes + activation_bytes + data_bytes; }
  // "about 12.3 GiB: parameters 1.2e+09 (4.5 GiB), gradients + AdamW moments 13.4 GiB, ..."
  std::string describe() const;
};

MemoryEstimate estimate_memory(const RunConfig& config);

// Physical RAM (sysconf), or the cgroup v2 memory limit when that is smaller; 0 if unknown.
double available_memory_bytes();

// UsageError with the estimate when it exceeds available_memory_bytes() (device = cpu only: the
// GPU path keeps parameters and activations on the device).
void check_memory_fits(const RunConfig& config);

}  // namespace smt
