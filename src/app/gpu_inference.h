// Classifier inference on a CUDA device for evaluation (`smt eval --device cuda`, and the held-out
// evaluation at the end of `smt train --device=cuda`): a GpuModel behind the InferenceModel interface
// of eval/evaluator.h, so that predict() and its metrics are the CPU's. In a build without CUDA the
// factories throw UsageError.
#pragma once
#include <cstdint>
#include <memory>

#include "eval/evaluator.h"
#include "model/model.h"

namespace smt {

class GpuModel;

// Non-owning: predicts with `model` as it is (its parallel context must be unset: one process's view).
std::unique_ptr<InferenceModel> make_gpu_inference(GpuModel& model);

// Owning: an fp32 GpuModel with `host`'s parameters on `device`, on a stream of its own.
std::unique_ptr<InferenceModel> make_cuda_inference(const Model& host, uint64_t attention_seed, int device);

}  // namespace smt
