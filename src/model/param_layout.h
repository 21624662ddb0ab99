// The parameter layout table: every model tensor's name, shape and offset in one flat fp32
// buffer. Parameters, gradients and both AdamW moments are four equal slices of one arena,
// so a tensor lives at the same offset in each. Within a layer the experts of a tensor are
// contiguous ([E, ...]), so a rank's local experts form one contiguous range.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace smt {

struct TensorSpec {
  std::string name;            // e.g. "layers.0.experts.w1"
  std::vector<int64_t> shape;  // global shape
  int64_t offset = 0;          // in floats, from the start of a slice
  int64_t numel = 0;
  bool decay = false;          // weight decay applies (rank >= 2)
  bool is_expert = false;      // leading dim is the expert index
  std::string shape_string() const;  // "[8,512,1024]"
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& config);
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int64_t total() const { return total_; }
  const TensorSpec& at(const std::string& name) const;  // throws Error naming the tensor
  const TensorSpec* find(const std::string& name) const;
  static bool layer_is_moe(const ModelConfig& config, int layer);

 private:
  void add(const std::string& name, std::vector<int64_t> shape, bool is_expert = false);
  std::vector<TensorSpec> tensors_;
  int64_t total_ = 0;
};

}  // namespace smt
