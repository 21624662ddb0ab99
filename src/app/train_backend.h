// What the training loop drives: the CPU Model itself, or a GpuModel on one CUDA device with the
// host Model as its mirror. The loop (cmd_train.cpp) is the same for both; the host Model is what
// checkpoints are written from and loaded into, and what evaluation reads.
//
// Invariant: after synced_host_model() the host Model's parameters and AdamW moments equal the
// training copy's (for the CPU backend they are the same memory).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/phase_totals.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "eval/evaluator.h"
#include "model/config.h"
#include "model/model.h"

namespace smt {

struct ParallelContext;

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string describe() const = 0;  // for the start-up log line
  virtual void zero_grads() = 0;
  virtual LossParts forward(const Batch& batch) = 0;
  virtual void backward() = 0;
  virtual double gradient_norm() = 0;  // collective under several ranks
  virtual void apply_update(const TrainConfig& train, int64_t step, double grad_norm) = 0;
  virtual const std::vector<LayerRouting>& routing() const = 0;
  virtual const ExchangeStats& exchange_stats() const = 0;
  // Test hook of the numeric guard: gradient element `offset` (layout order) becomes NaN.
  virtual void poison_gradient(int64_t offset) = 0;
  // The first gradient tensor (layout order) with a NaN/Inf, "" if none.
  virtual std::string first_non_finite_gradient() = 0;
  // The host Model, brought up to date with the training copy (see the invariant above).
  virtual Model& synced_host_model() = 0;
  // Device memory in use (bytes, cudaMemGetInfo: total - free on this rank's device), -1 on the CPU. The
  // stream-ordered pool keeps its temporaries' memory (retain_stream_ordered_memory), so this includes
  // the largest set of temporaries a step has needed.
  virtual double device_memory_used_bytes() const { return -1; }
  // train.profile: the GPU time per phase of the timed steps; nullptr when not profiling.
  virtual const PhaseTotals* phase_totals() const { return nullptr; }
  // The host Model's parameters and moments were replaced (checkpoint loaded): take them over.
  virtual void host_model_changed() = 0;
  // After training: the classifier's predictions on `data`, in data order on every rank. The model is
  // first completed on every rank (gather_experts), then each rank predicts a share on its device.
  // Ends the backend's training use (the models leave the parallel scheme). Collective.
  virtual Predictions evaluate(const Dataset& data, int64_t seq_len, int64_t batch_size, Communicator& world) = 0;
};

std::unique_ptr<TrainBackend> make_cpu_backend(Model& model);

// device = cuda. cuda_device_for_rank() picks this rank's device (local rank modulo the visible
// devices) and throws UsageError (exit 2) in a build without CUDA, with no usable device, or for
// parallel.device_comm = nccl where ranks share a device: call it before anything is written
// (collective under several ranks). make_cuda_backend() puts a GpuModel on that device, initialised
// from `host`; under several ranks it trains as one rank of `par` (device communicators per
// parallel.device_comm: NCCL, or MPI staged through pinned memory).
int cuda_device_for_rank(const ParallelContext& par, const std::string& device_comm);
std::unique_ptr<TrainBackend> make_cuda_backend(Model& host, const RunConfig& config, int device,
                                                const ParallelContext& par);

}  // namespace smt
