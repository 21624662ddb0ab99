// GpuModel as an InferenceModel (see gpu_inference.h).
#include "app/gpu_inference.h"

#include "app/cuda_device.h"
#include "core/error.h"

#ifdef SMT_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "model/gpu_model.h"
#endif

namespace smt {

#ifdef SMT_CUDA
namespace {

// Downloads what predict() reads, once per forward (probabilities) or on first use (expert choices).
class GpuInference : public InferenceModel {
 public:
  explicit GpuInference(GpuModel* model) : model_(model) {}
  const ModelConfig& config() const override { return model_->config(); }
  void forward(const Batch& batch) override {
    SMT_CHECK(model_->parallel() == nullptr, "GPU inference runs on one process's full model");
    model_->forward(batch, /*with_loss=*/false);
    probs_ = model_->probs();
    topk_.assign(static_cast<size_t>(model_->config().layers), {});
    have_topk_.assign(topk_.size(), false);
  }
  const std::vector<float>& probs() override { return probs_; }
  const std::vector<LayerRouting>& routing() override { return model_->routing(); }
  const std::vector<int32_t>& topk_idx(int layer) override {
    SMT_CHECK(layer >= 0 && static_cast<size_t>(layer) < topk_.size(), "topk_idx: no layer ", layer);
    if (!have_topk_[layer]) {
      topk_[layer] = model_->topk_idx(layer);
      have_topk_[layer] = true;
    }
    return topk_[layer];
  }

 protected:
  GpuModel* model_;

 private:
  std::vector<float> probs_;
  std::vector<std::vector<int32_t>> topk_;
  std::vector<bool> have_topk_;
};

// Owns its stream and model; the stream outlives the model (declaration order: stream first).
class OwningGpuInference final : public GpuInference {
 public:
  OwningGpuInference(const Model& host, uint64_t attention_seed, int device) : GpuInference(nullptr) {
    SMT_CUDA_CHECK(cudaSetDevice(device));
    retain_stream_ordered_memory();
    SMT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      owned_ = std::make_unique<GpuModel>(host.config(), 0.0f, 0.0f, attention_seed, stream_, gpu::Precision::kFp32);
      owned_->upload_from(host);
    } catch (...) {
      owned_.reset();
      cudaStreamDestroy(stream_);
      throw;
    }
    model_ = owned_.get();
  }
  ~OwningGpuInference() override {
    owned_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  OwningGpuInference(const OwningGpuInference&) = delete;
  OwningGpuInference& operator=(const OwningGpuInference&) = delete;

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GpuModel> owned_;
};

}  // namespace

std::unique_ptr<InferenceModel> make_gpu_inference(GpuModel& model) { return std::make_unique<GpuInference>(&model); }

std::unique_ptr<InferenceModel> make_cuda_inference(const Model& host, uint64_t attention_seed, int device) {
  return std::make_unique<OwningGpuInference>(host, attention_seed, device);
}

#else

std::unique_ptr<InferenceModel> make_gpu_inference(GpuModel&) {
  usable_cuda_device();  // throws: no CUDA in this build
  return nullptr;
}
std::unique_ptr<InferenceModel> make_cuda_inference(const Model&, uint64_t, int) {
  usable_cuda_device();
  return nullptr;
}

#endif

}  // namespace smt
