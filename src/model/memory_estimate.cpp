// Memory estimate of a configuration (see memory_estimate.h). The activation terms follow
// Model::ensure_activations / forward / backward: per layer 8 [T,d] buffers, router [T,E] x 2,
// top-k [T,k] x 2, routed rows [R,d] x 2 and hidden [R,f] x 2 with R = T*k; one layer's worth of
// backward scratch; logits (and their gradient) [T,V] for the LM head.
#include "model/memory_estimate.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace smt {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string gib(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, bytes >= 0.1 * kGiB ? "%.1f GiB" : "%.0f MiB", bytes >= 0.1 * kGiB ? bytes / kGiB : bytes / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

MemoryEstimate estimate_memory(const RunConfig& c) {
  const auto& M = c.model;
  const double d = M.d_model, f = M.expert_hidden, L = M.layers, E = M.experts, k = M.top_k, V = M.vocab_size;
  const double moe_layers = M.moe_every <= 1 ? L : std::floor(L / std::max(1, M.moe_every));
  const double dense_layers = L - moe_layers;
  const double classes = M.num_classes > 0 ? M.num_classes : 6;  // 0 = from the data: at most LIAR's six
  MemoryEstimate e;
  const double per_layer_common = 4 * d * d + 2 * d;
  const double expert = 2 * d * f + f + d;
  e.params = V * d + moe_layers * (per_layer_common + d * E + E * expert) +
             dense_layers * (per_layer_common + expert) + d + d * classes + classes;  // the layout always has the classifier
  e.param_bytes = 4 * e.params;
  e.optimizer_bytes = 3 * e.param_bytes;
  e.checkpoint_bytes = 3 * e.param_bytes;
  const double N = static_cast<double>(c.train.seq_len);
  auto activations = [&](double B, bool backward) {
    const double T = B * N, R = T * k;
    const double layer = 8 * T * d + 2 * T * E + 2 * T + 2 * T * k + B * M.heads * N + 2 * R * d + 2 * R * f;
    const double head = M.head == "lm" ? T * V * (backward ? 2 : 1) : B * classes * 2;
    return 4 * (L * layer + (backward ? layer : 0) + head + 2 * T * d);
  };
  e.activation_bytes = activations(static_cast<double>(c.train.batch_size), true);
  if (M.head == "classifier")  // the held-out evaluation: forward only, eval_batch_size sequences
    e.activation_bytes = std::max(e.activation_bytes, activations(static_cast<double>(c.train.eval_batch_size), false));
  if (c.data.source == "synthetic") {
    const double items = static_cast<double>(c.data.synthetic_train) + static_cast<double>(c.data.synthetic_heldout);
    const double chars = 200 + c.data.long_context_fraction * static_cast<double>(c.data.long_context_chars);
    e.data_bytes = items * chars * 5;  // text + int32 tokens
  }
  return e;
}

std::string MemoryEstimate::describe() const {
  char count[32];
  std::snprintf(count, sizeof count, "%.3g", params);
  return "about " + gib(total()) + ": parameters " + count + " (" + gib(param_bytes) + "), gradients + AdamW moments " +
         gib(optimizer_bytes) + ", checkpoint image " + gib(checkpoint_bytes) + ", activations " +
         gib(activation_bytes) + ", data " + gib(data_bytes);
}

double available_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  double bytes = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0;
  std::ifstream cg("/sys/fs/cgroup/memory.max");
  double limit = 0;
  if (cg >> limit && limit > 0 && (bytes == 0 || limit < bytes)) bytes = limit;  // "max" fails to parse: no limit
  return bytes;
}

void check_memory_fits(const RunConfig& config) {
  if (config.device != "cpu") return;
  const MemoryEstimate e = estimate_memory(config);
  const double have = available_memory_bytes();
  SMT_USAGE_CHECK(have <= 0 || e.total() <= have, "this configuration needs ", e.describe(), " [",
                  config.train.batch_size, " x ", config.train.seq_len, " tokens per batch, ", config.model.layers,
                  " layers, ", config.model.experts, " experts], but this machine has ", gib(have),
                  " of RAM: reduce the model, train.batch_size, train.seq_len or train.eval_batch_size");
}

}  // namespace smt
