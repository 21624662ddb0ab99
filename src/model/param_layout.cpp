// Parameter layout table (see param_layout.h); order = embedding, layers, final norm, classifier.
#include "model/param_layout.h"

#include "core/error.h"

namespace smt {

std::string TensorSpec::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {  // appended piece by piece: GCC 12 warns falsely on "," + string
    if (i > 0) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool ParamLayout::layer_is_moe(const ModelConfig& config, int layer) {
  return config.moe_every <= 1 || layer % config.moe_every == config.moe_every - 1;
}

void ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool is_expert) {
  TensorSpec t;
  t.name = name;
  t.numel = 1;
  for (int64_t s : shape) t.numel *= s;
  t.shape = std::move(shape);
  t.offset = total_;
  const bool is_bias = name.ends_with(".b") || name.ends_with(".b1") || name.ends_with(".b2");
  t.decay = t.shape.size() >= 2 && !is_bias;
  t.is_expert = is_expert;
  // Keep every tensor 16-float aligned (64 bytes) for vector loads.
  total_ += (t.numel + 15) / 16 * 16;
  tensors_.push_back(std::move(t));
}

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t d = c.d_model, f = c.expert_hidden, V = c.vocab_size;
  add("embedding", {V, d});
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const bool moe = layer_is_moe(c, l);
    const int64_t E = moe ? c.experts : 1;
    add(p + "attn_norm", {d});
    add(p + "wq", {d, d});
    add(p + "wk", {d, d});
    add(p + "wv", {d, d});
    add(p + "wo", {d, d});
    add(p + "ffn_norm", {d});
    if (moe) add(p + "router", {d, E});
    add(p + "experts.w1", {E, d, f}, true);
    add(p + "experts.b1", {E, f}, true);
    add(p + "experts.w2", {E, f, d}, true);
    add(p + "experts.b2", {E, d}, true);
  }
  add("final_norm", {d});
  add("classifier.w", {d, static_cast<int64_t>(c.num_classes)});
  add("classifier.b", {static_cast<int64_t>(c.num_classes)});
}

const TensorSpec* ParamLayout::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorSpec& ParamLayout::at(const std::string& name) const {
  const TensorSpec* t = find(name);
  SMT_CHECK(t != nullptr, "no model tensor named '", name, "'");
  return *t;
}

}  // namespace smt
