// CUDA device checks (see cuda_device.h).
#include "app/cuda_device.h"

#include "core/error.h"

#ifdef SMT_CUDA
#include <cuda_runtime.h>
#endif

namespace smt {

int count_usable_cuda_devices(std::string* why) {
#ifdef SMT_CUDA
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && count > 0) return count;
  *why = std::string("no CUDA device is usable here (") + (err == cudaSuccess ? "none visible" : cudaGetErrorString(err)) +
         ")";
  return 0;
#else
  *why = "this smt was built without CUDA (use the cuda preset)";
  return 0;
#endif
}

int usable_cuda_device() {
  std::string why;
  SMT_USAGE_CHECK(count_usable_cuda_devices(&why) > 0, "device = cuda, but ", why);
  return 0;
}

}  // namespace smt
