// Small model configurations and a comparison shared by the whole-model tests (CPU, MPI and GPU):
// two layers, two heads, 8 experts top-2 by default; a relative error in the 2-norm.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "model/config.h"
#include "model/model.h"

namespace smt::testing_support {

struct TinyModel {
  int64_t d_model = 64, expert_hidden = 96;
  std::string head = "classifier";  // classifier (3 classes) | lm (then causal)
  std::string attention = "local";
  double capacity_factor = 0.0;
  int moe_every = 1;
  int block_size = 16, window = 16;
};

inline ModelConfig tiny_model_config(const TinyModel& t) {
  ModelConfig c;
  c.d_model = t.d_model;
  c.layers = 2;
  c.heads = 2;
  c.experts = 8;
  c.top_k = 2;
  c.expert_hidden = t.expert_hidden;
  c.capacity_factor = t.capacity_factor;
  c.moe_every = t.moe_every;
  c.head = t.head;
  c.num_classes = 3;
  c.attention = t.attention;
  c.causal = t.head == "lm";
  c.block_size = t.block_size;
  c.window = t.window;
  return c;
}

// A few AdamW steps at a high learning rate, no warm-up: parameters move enough to compare.
inline TrainConfig tiny_train_config() {
  TrainConfig train;
  train.steps = 3;
  train.lr = 3e-3f;
  train.warmup = 0;
  return train;
}

// ||a - b|| / ||b|| over n elements (b the reference).
inline double norm_rel(const float* a, const float* b, int64_t n) {
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(diff) / (std::sqrt(ref) + 1e-30);
}

// Biases start at zero: give them values (uniform +-0.2, deterministic) so that a test sees the paths that add
// them (e.g. the GPU's bf16 experts add b1 and b2 outside the GEMMs). Returns how many values were set.
inline int64_t randomize_biases(Model& m, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-0.2f, 0.2f);
  int64_t set = 0;
  for (const auto& t : m.layout().tensors()) {
    if (!(t.name.ends_with(".b1") || t.name.ends_with(".b2") || t.name.ends_with(".b"))) continue;
    for (int64_t i = 0; i < t.numel; ++i) m.params()[t.offset + i] = dist(gen);
    set += t.numel;
  }
  return set;
}

}  // namespace smt::testing_support
