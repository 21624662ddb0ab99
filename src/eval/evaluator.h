// Batched inference of a classifier model over a data set: class probabilities per example,
// routing counts summed over the set, and the metrics of src/eval/metrics.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/metrics.h"
#include "model/model.h"

namespace smt {

struct Predictions {
  int num_classes = 0;
  std::vector<float> probs;     // [n, C]
  std::vector<int32_t> labels;  // [n]
  std::vector<int32_t> groups;  // [n]
  std::vector<std::vector<int64_t>> tokens_per_expert;  // [layers][E], summed over the set (all positions, padding included)
  // Per layer, the top-k expert choices of each example's non-PAD tokens: [layers][n * E_l]
  // (E_l = 1 for a dense-FFN layer), and the capacity drops summed over the set.
  std::vector<std::vector<int64_t>> expert_counts;
  std::vector<int> experts_per_layer;  // [layers] E_l
  std::vector<int64_t> dropped;        // [layers]
};

// What predict() runs: a classifier's inference, batch by batch, on the CPU Model or on a GpuModel
// (app/gpu_inference.h). The references returned stay valid until the next forward().
class InferenceModel {
 public:
  virtual ~InferenceModel() = default;
  virtual const ModelConfig& config() const = 0;
  virtual void forward(const Batch& batch) = 0;                   // without a loss
  virtual const std::vector<float>& probs() = 0;                 // [B, C] class probabilities
  virtual const std::vector<LayerRouting>& routing() = 0;        // per layer
  virtual const std::vector<int32_t>& topk_idx(int layer) = 0;   // [B*N, k] expert choices
};

// The CPU Model as an InferenceModel.
class CpuInference final : public InferenceModel {
 public:
  explicit CpuInference(Model& model) : model_(model) {}
  const ModelConfig& config() const override { return model_.config(); }
  void forward(const Batch& batch) override { model_.forward(batch, /*with_loss=*/false); }
  const std::vector<float>& probs() override { return model_.probs(); }
  const std::vector<LayerRouting>& routing() override { return model_.routing(); }
  const std::vector<int32_t>& topk_idx(int layer) override { return model_.topk_idx(layer); }

 private:
  Model& model_;
};

// progress: called with (done, total) after each batch (may be empty).
Predictions predict(InferenceModel& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                    const std::function<void(int64_t, int64_t)>& progress = {});
Predictions predict(Model& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                    const std::function<void(int64_t, int64_t)>& progress = {});

struct EvalSummary {
  ClassificationMetrics overall;
  double majority_accuracy = 0;          // of the evaluated set
  bool has_binary_view = false;          // six-way LIAR: collapsed to false/true
  ClassificationMetrics binary;          // when has_binary_view
  double binary_majority_accuracy = 0;
  std::vector<std::string> group_names;  // per-group accuracy (synthetic families)
  std::vector<double> group_accuracy;
  std::vector<int64_t> group_count;
};

EvalSummary summarize(const Predictions& p, const Dataset& data);
// A readable table for a terminal.
std::string format_summary(const EvalSummary& s, const std::string& title);

}  // namespace smt
