// Device communicators for the parallel groups (see device_parallel.h).
#ifdef SMT_CUDA
#include "parallel/device_parallel.h"

#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/error.h"

namespace smt {

bool device_comm_uses_nccl(const ParallelContext& host, const std::string& comm) {
  SMT_USAGE_CHECK(comm == "auto" || comm == "nccl" || comm == "mpi",
                  "parallel.device_comm must be auto, nccl or mpi, got '", comm, "'");
  int num_devices = 0;
  SMT_CUDA_CHECK(cudaGetDeviceCount(&num_devices));
  // NCCL needs a device per rank: with more ranks on a node than devices, ranks share one.
  double shares_device = host.world->local_size() > num_devices ? 1.0 : 0.0;
  host.world->all_reduce_max(&shares_device, 1);  // every rank takes the same backend
  const bool use_nccl = comm == "nccl" || (comm == "auto" && shares_device == 0.0);
  SMT_USAGE_CHECK(!(use_nccl && shares_device != 0.0), "parallel.device_comm = nccl, but ", host.world->local_size(),
                  " ranks share ", num_devices, " device(s) on a node and NCCL refuses two ranks on one device; "
                  "use parallel.device_comm = mpi (or auto), or one rank per device");
  return use_nccl;
}

DeviceParallelContext make_device_parallel_context(const ParallelContext& host, const std::string& comm, int device,
                                                   CUstream_st* compute_stream) {
  const bool use_nccl = device_comm_uses_nccl(host, comm);
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
                ctx.expert_data_group->rank() == host.expert_data_group->rank(),
            "device communicators do not match the host groups");
  return ctx;
}

}  // namespace smt
#endif  // SMT_CUDA
