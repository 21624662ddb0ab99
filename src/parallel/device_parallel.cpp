// Device communicators for the parallel groups (see device_parallel.h).
#ifdef SMT_CUDA
#include "parallel/device_parallel.h"

#include <cuda_runtime.h>

#include <set>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"

namespace smt {

bool device_comm_uses_nccl(const ParallelContext& host, const std::string& comm, int device) {
  SMT_USAGE_CHECK(comm == "auto" || comm == "nccl" || comm == "mpi",
                  "parallel.device_comm must be auto, nccl or mpi, got '", comm, "'");
  // NCCL needs a GPU per rank: gather every rank's device UUID and look for repeats.
  cudaDeviceProp prop{};
  SMT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  constexpr int64_t kUuidBytes = sizeof(prop.uuid.bytes);
  const int W = host.world->size();
  std::vector<char> uuids(static_cast<size_t>(W * kUuidBytes));
  host.world->all_gather(prop.uuid.bytes, uuids.data(), kUuidBytes);
  std::set<std::string> distinct;
  for (int r = 0; r < W; ++r) distinct.insert(std::string(uuids.data() + r * kUuidBytes, kUuidBytes));
  const bool shares_device = static_cast<int>(distinct.size()) < W;
  const bool use_nccl = comm == "nccl" || (comm == "auto" && !shares_device);
  SMT_USAGE_CHECK(!(use_nccl && shares_device), "parallel.device_comm = nccl, but ", W, " ranks use ",
                  distinct.size(), " GPU(s) and NCCL refuses two ranks "
                  "on one device; use parallel.device_comm = mpi (or auto), or one rank per device");
  return use_nccl;
}

DeviceParallelContext make_device_parallel_context(const ParallelContext& host, const std::string& comm, int device,
                                                   CUstream_st* compute_stream) {
  const bool use_nccl = device_comm_uses_nccl(host, comm, device);
  DeviceParallelContext ctx;
  ctx.host = &host;
  const int r = host.world->rank(), P = host.expert_parallel;
  if (use_nccl) {
    ctx.world = make_nccl_communicator(*host.world, device, compute_stream);
    ctx.backend = "nccl";
  } else {
    ctx.world = make_staged_communicator(host.world->split(/*color=*/0, /*key=*/r), compute_stream);
    ctx.backend = "mpi+staged";
  }
  // The host groups' colors and keys (make_parallel_context), so ranks and orders match.
  ctx.expert_group = ctx.world->split(/*color=*/r / P, /*key=*/r);
  ctx.expert_data_group = ctx.world->split(/*color=*/r % P, /*key=*/r);
  SMT_CHECK(ctx.expert_group->size() == host.expert_group->size() &&
                ctx.expert_group->rank() == host.expert_group->rank() &&
                ctx.expert_data_group->size() == host.expert_data_group->size() &&
                ctx.expert_data_group->rank() == host.expert_data_group->rank(),
            "device communicators do not match the host groups");
  return ctx;
}

}  // namespace smt
#endif  // SMT_CUDA
