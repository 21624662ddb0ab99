// Expert and data parallelism on GPUs (CUDA builds only): the groups of a host ParallelContext
// (parallel_context.h) mirrored by communicators over device buffers, for what is large and lives on
// the device (MoE rows, gradients). What is small and needed on the host (routing counts, loss sums)
// keeps travelling over the host groups.
//
// Backends: NCCL (one device per rank; bootstrapped over the host world) or the host MPI communicator
// staged through pinned memory (several ranks on one device, where NCCL refuses to run).
#pragma once
#ifdef SMT_CUDA
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/parallel_context.h"

namespace smt {

struct DeviceParallelContext {
  const ParallelContext* host = nullptr;            // the same ranks and groups, host buffers
  std::unique_ptr<Communicator> world;              // device buffers, same rank order as host->world
  std::unique_ptr<Communicator> expert_group;       // ... as host->expert_group
  std::unique_ptr<Communicator> expert_data_group;  // ... as host->expert_data_group
  std::string backend;                              // "nccl" | "mpi+staged"
};

// Collective over host.world: whether the device communicators are NCCL (else staged MPI), by the
// rule below; throws UsageError for comm = nccl where ranks share a device (call it before any write).
// `device` is this rank's CUDA device.
bool device_comm_uses_nccl(const ParallelContext& host, const std::string& comm, int device);

// Collective over host.world. comm: "nccl", "mpi" (staged), or "auto": NCCL when no two ranks use the
// same GPU (compared by device UUID, so CUDA_VISIBLE_DEVICES per rank is seen through), staged MPI
// otherwise; all ranks agree.
// The device communicators order their work after `compute_stream` and make it wait for them.
DeviceParallelContext make_device_parallel_context(const ParallelContext& host, const std::string& comm, int device,
                                                   CUstream_st* compute_stream);

}  // namespace smt
#endif  // SMT_CUDA
