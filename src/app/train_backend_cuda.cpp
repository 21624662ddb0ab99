// The CUDA training backend: a GpuModel on this rank's device, the host Model as mirror for
// checkpoints and evaluation (see train_backend.h). Without SMT_CUDA: a clear refusal.
#include "app/train_backend.h"

#include "app/cuda_device.h"
#include "core/error.h"
#include "parallel/parallel_context.h"

#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include <limits>

#include "core/cuda_check.h"
#include "model/finite_check.h"
#include "app/gpu_inference.h"
#include "app/parallel_run.h"
#include "core/gpu_phase_timer.h"
#include "model/gpu_model.h"
#include "parallel/device_parallel.h"
#endif

namespace smt {

#ifdef SMT_CUDA
namespace {

class CudaBackend final : public TrainBackend {
 public:
  CudaBackend(Model& host, const RunConfig& config, int device, const ParallelContext& par)
      : host_(host), device_(device) {
    SMT_CUDA_CHECK(cudaSetDevice(device_));
    retain_stream_ordered_memory();
    cudaDeviceProp prop{};
    SMT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    device_name_ = prop.name;
    SMT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const gpu::Precision precision =
        config.resolved_precision() == "bf16" ? gpu::Precision::kBf16 : gpu::Precision::kFp32;
    gpu_ = std::make_unique<GpuModel>(config.model, config.train.aux_loss_coeff, config.train.z_loss_coeff, config.seed,
                                      stream_, precision);
    gpu_->set_flash_dq_mode(config.flash_dq == "atomic" ? gpu::FlashDqMode::kAtomic : gpu::FlashDqMode::kDeterministic);
    gpu_->upload_from(host_);
    if (par.distributed()) {
      parallel_ = std::make_unique<DeviceParallelContext>(
          make_device_parallel_context(par, config.parallel.device_comm, device_, stream_));
      gpu_->set_parallel(parallel_.get());
    }
    if (config.train.profile) {
      timer_ = std::make_unique<GpuPhaseTimer>(stream_);
      gpu_->set_phase_timer(timer_.get());
    }
  }
  ~CudaBackend() override {
    gpu_.reset();       // its buffers and cuBLAS handle use the stream
    timer_.reset();     // its events too
    parallel_.reset();  // so do the device communicators
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string describe() const override {
    return "cuda device " + std::to_string(device_) + " (" + device_name_ + "), " +
           gpu::precision_name(gpu_->precision()) + " GEMM operands, attention " +
           (gpu_->uses_flash_attention()
                ? std::string("flash bf16 (dq ") +
                      (gpu_->flash_dq_mode() == gpu::FlashDqMode::kAtomic ? "atomic" : "deterministic") + ")"
                : std::string("fp32 kernels")) +
           (parallel_ ? ", MoE rows and gradients over " + parallel_->backend : "");
  }
  void zero_grads() override {  // a step begins
    if (timer_ && steps_begun_++ > 0) timer_->begin_step();  // the first step (allocations, heuristics) is not timed
    gpu_->zero_grads();
    gpu_->mark("zero_grads");
  }
  LossParts forward(const Batch& batch) override { return gpu_->forward(batch); }
  void backward() override { gpu_->backward(); }
  double gradient_norm() override { return smt::gradient_norm(*gpu_); }
  void apply_update(const TrainConfig& train, int64_t step, double grad_norm) override {
    smt::apply_update(*gpu_, train, step, grad_norm);
    if (timer_) timer_->end_step();
  }
  const PhaseTotals* phase_totals() const override { return timer_ ? &timer_->totals() : nullptr; }
  const std::vector<LayerRouting>& routing() const override { return gpu_->routing(); }
  const ExchangeStats& exchange_stats() const override { return gpu_->exchange_stats(); }
  void poison_gradient(int64_t offset) override {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    SMT_CUDA_CHECK(cudaMemcpyAsync(gpu_->grads() + offset, &nan, sizeof nan, cudaMemcpyHostToDevice, stream_));
    SMT_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `nan` lives on this stack frame
  }
  std::string first_non_finite_gradient() override {
    const std::vector<float> grads = gpu_->download_grads();
    return first_non_finite_tensor(gpu_->layout(), grads.data());
  }
  Model& synced_host_model() override {
    gpu_->download_to(host_);
    return host_;
  }
  void host_model_changed() override { gpu_->upload_from(host_); }
  Predictions evaluate(const Dataset& data, int64_t seq_len, int64_t batch_size, Communicator& world) override {
    Model& host = synced_host_model();
    gather_experts(host);  // the other ranks' experts
    host.set_parallel(nullptr);
    gpu_->upload_from(host);
    gpu_->set_parallel(nullptr);
    const std::unique_ptr<InferenceModel> inference = make_gpu_inference(*gpu_);
    return predict_on_all_ranks(*inference, data, seq_len, batch_size, world);
  }
  double device_memory_used_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    SMT_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return static_cast<double>(total_bytes - free_bytes);
  }

 private:
  Model& host_;
  int device_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DeviceParallelContext> parallel_;  // several ranks only
  std::unique_ptr<GpuModel> gpu_;
  std::unique_ptr<GpuPhaseTimer> timer_;  // train.profile only
  int64_t steps_begun_ = 0;
};

}  // namespace

int cuda_device_for_rank(const ParallelContext& par, const std::string& device_comm) {
  std::string why;
  const int count = count_usable_cuda_devices(&why);
  // Every rank learns whether any rank lacks a device, so that all refuse together (no rank is left
  // waiting in a collective).
  double unusable = count > 0 ? 0.0 : 1.0;
  if (par.distributed()) par.world->all_reduce_max(&unusable, 1);
  SMT_USAGE_CHECK(unusable == 0.0, "device = cuda, but ", count > 0 ? "no CUDA device is usable on another rank" : why);
  const int device = par.world->local_rank() % count;
  if (par.distributed()) (void)device_comm_uses_nccl(par, device_comm, device);  // refuses nccl on shared devices
  return device;
}

std::unique_ptr<TrainBackend> make_cuda_backend(Model& host, const RunConfig& config, int device,
                                                const ParallelContext& par) {
  return std::make_unique<CudaBackend>(host, config, device, par);
}

#else

int cuda_device_for_rank(const ParallelContext&, const std::string&) {
  return usable_cuda_device();  // throws: no CUDA in this build
}

std::unique_ptr<TrainBackend> make_cuda_backend(Model&, const RunConfig&, int, const ParallelContext&) {
  usable_cuda_device();
  return nullptr;
}

#endif

}  // namespace smt
