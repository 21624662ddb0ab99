// Whether this process can use a CUDA device, for the refusals of device = cuda (exit 2, before
// anything is written) in `smt train` and `smt eval`.
#pragma once
#include <string>

namespace smt {

// The number of usable CUDA devices; 0 with the reason in *why where there is none (including a
// build without CUDA).
int count_usable_cuda_devices(std::string* why);

// Device 0 when one is usable; otherwise throws UsageError "device = cuda, but <why>".
int usable_cuda_device();

}  // namespace smt
