// The CPU training backend: the loop's calls go straight to the Model (see train_backend.h).
#include "app/train_backend.h"

#include <limits>

#include "app/parallel_run.h"
#include "model/finite_check.h"

namespace smt {

namespace {

class CpuBackend final : public TrainBackend {
 public:
  explicit CpuBackend(Model& model) : model_(model) {}
  std::string describe() const override { return "cpu"; }
  void zero_grads() override { model_.zero_grads(); }
  LossParts forward(const Batch& batch) override { return model_.forward(batch); }
  void backward() override { model_.backward(); }
  double gradient_norm() override { return smt::gradient_norm(model_); }
  void apply_update(const TrainConfig& train, int64_t step, double grad_norm) override {
    smt::apply_update(model_, train, step, grad_norm);
  }
  const std::vector<LayerRouting>& routing() const override { return model_.routing(); }
  const ExchangeStats& exchange_stats() const override { return model_.exchange_stats(); }
  void poison_gradient(int64_t offset) override { model_.grads()[offset] = std::numeric_limits<float>::quiet_NaN(); }
  std::string first_non_finite_gradient() override { return first_non_finite_tensor(model_.layout(), model_.grads()); }
  Model& synced_host_model() override { return model_; }
  void host_model_changed() override {}
  Predictions evaluate(const Dataset& data, int64_t seq_len, int64_t batch_size, Communicator& world) override {
    gather_experts(model_);
    model_.set_parallel(nullptr);
    CpuInference inference(model_);
    return predict_on_all_ranks(inference, data, seq_len, batch_size, world);
  }

 private:
  Model& model_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_backend(Model& model) { return std::make_unique<CpuBackend>(model); }

}  // namespace smt
