// Batched inference and summary (see evaluator.h).
#include "eval/evaluator.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "core/error.h"
#include "data/batch.h"
#include "data/liar.h"

namespace smt {

Predictions predict(Model& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                    const std::function<void(int64_t, int64_t)>& progress) {
  CpuInference cpu(model);
  return predict(cpu, data, seq_len, batch_size, progress);
}

Predictions predict(InferenceModel& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                    const std::function<void(int64_t, int64_t)>& progress) {
  SMT_CHECK(model.config().head == "classifier", "evaluation needs a classifier head");
  Predictions p;
  p.num_classes = model.config().num_classes;
  const int64_t n = static_cast<int64_t>(data.examples.size());
  p.probs.reserve(n * p.num_classes);
  const ModelConfig& mc = model.config();
  for (int l = 0; l < mc.layers; ++l) {
    const bool moe = ParamLayout::layer_is_moe(mc, l);
    p.experts_per_layer.push_back(moe ? mc.experts : 1);
    p.expert_counts.emplace_back(static_cast<size_t>(n) * (moe ? mc.experts : 1), 0);
  }
  p.dropped.assign(static_cast<size_t>(mc.layers), 0);
  for (int64_t start = 0; start < n; start += batch_size) {
    const int64_t count = std::min(batch_size, n - start);
    std::vector<int64_t> idx(count);
    for (int64_t i = 0; i < count; ++i) idx[i] = start + i;
    const Batch batch = make_batch(data, idx, seq_len);
    model.forward(batch);
    const auto& probs = model.probs();
    p.probs.insert(p.probs.end(), probs.begin(), probs.begin() + count * p.num_classes);
    for (int64_t i = 0; i < count; ++i) {
      p.labels.push_back(batch.labels[i]);
      p.groups.push_back(batch.groups[i]);
    }
    const auto& routing = model.routing();
    if (p.tokens_per_expert.empty()) p.tokens_per_expert.resize(routing.size());
    for (size_t l = 0; l < routing.size(); ++l) {
      auto& acc = p.tokens_per_expert[l];
      if (acc.empty()) acc.assign(routing[l].tokens_per_expert.size(), 0);
      for (size_t e = 0; e < acc.size(); ++e) acc[e] += routing[l].tokens_per_expert[e];
      p.dropped[l] += routing[l].dropped;
    }
    for (int l = 0; l < mc.layers; ++l) {
      const auto& topk = model.topk_idx(l);
      const auto E = static_cast<size_t>(p.experts_per_layer[l]);
      const size_t k = ParamLayout::layer_is_moe(mc, l) ? static_cast<size_t>(mc.top_k) : 1;
      SMT_CHECK(topk.size() >= static_cast<size_t>(count * seq_len) * k, "predict: layer ", l, " has ", topk.size(),
                " expert choices for ", count * seq_len, " positions");
      auto& counts = p.expert_counts[l];
      for (int64_t b = 0; b < count; ++b)
        for (int64_t t = 0; t < seq_len; ++t) {
          if (!batch.valid[b * seq_len + t]) continue;
          const int32_t* choice = topk.data() + static_cast<size_t>(b * seq_len + t) * k;
          for (size_t j = 0; j < k; ++j) counts[static_cast<size_t>(start + b) * E + static_cast<size_t>(choice[j])] += 1;
        }
    }
    if (progress) progress(start + count, n);
  }
  return p;
}

EvalSummary summarize(const Predictions& p, const Dataset& data) {
  EvalSummary s;
  s.overall = compute_classification_metrics(p.probs, p.labels, p.num_classes);
  s.majority_accuracy = data.majority_accuracy();
  if (p.num_classes == 6 && data.name.rfind("liar", 0) == 0) {
    s.has_binary_view = true;
    const std::vector<float> bin = collapse_probs(p.probs, 6, {3, 4, 5});
    std::vector<int32_t> bl(p.labels.size());
    int64_t pos = 0;
    for (size_t i = 0; i < bl.size(); ++i) {
      bl[i] = p.labels[i] >= 3 ? 1 : 0;
      pos += bl[i];
    }
    s.binary = compute_classification_metrics(bin, bl, 2);
    const double frac = bl.empty() ? 0.0 : static_cast<double>(pos) / bl.size();
    s.binary_majority_accuracy = std::max(frac, 1.0 - frac);
  }
  if (!data.group_names.empty()) {
    const size_t G = data.group_names.size();
    s.group_names = data.group_names;
    s.group_accuracy.assign(G, 0.0);
    s.group_count.assign(G, 0);
    for (size_t i = 0; i < p.labels.size(); ++i) {
      const int32_t g = p.groups[i];
      if (g < 0 || static_cast<size_t>(g) >= G) continue;
      const float* row = &p.probs[i * p.num_classes];
      const int32_t pred = static_cast<int32_t>(std::max_element(row, row + p.num_classes) - row);
      s.group_count[g] += 1;
      s.group_accuracy[g] += pred == p.labels[i] ? 1.0 : 0.0;
    }
    for (size_t g = 0; g < G; ++g)
      if (s.group_count[g] > 0) s.group_accuracy[g] /= static_cast<double>(s.group_count[g]);
  }
  return s;
}

std::string format_summary(const EvalSummary& s, const std::string& title) {
  std::ostringstream os;
  char buf[256];
  os << title << "\n";
  std::snprintf(buf, sizeof buf, "  %-22s %8lld\n", "examples", static_cast<long long>(s.overall.n));
  os << buf;
  std::snprintf(buf, sizeof buf, "  %-22s %8.4f   (majority class %.4f)\n", "accuracy", s.overall.accuracy,
                s.majority_accuracy);
  os << buf;
  std::snprintf(buf, sizeof buf, "  %-22s %8.4f\n  %-22s %8.4f\n  %-22s %8.4f\n  %-22s %8.4f\n", "macro-F1",
                s.overall.macro_f1, "NLL", s.overall.nll, "Brier", s.overall.brier, "ECE (15 bins)", s.overall.ece);
  os << buf;
  if (s.overall.auc >= 0) {
    std::snprintf(buf, sizeof buf, "  %-22s %8.4f\n", "ROC AUC", s.overall.auc);
    os << buf;
  }
  if (s.has_binary_view) {
    std::snprintf(buf, sizeof buf, "  %-22s %8.4f   (majority class %.4f), AUC %.4f\n", "binary accuracy",
                  s.binary.accuracy, s.binary_majority_accuracy, s.binary.auc);
    os << buf;
  }
  for (size_t g = 0; g < s.group_names.size(); ++g) {
    if (s.group_count[g] == 0) continue;
    std::snprintf(buf, sizeof buf, "  accuracy %-13s %8.4f   (n=%lld)\n", s.group_names[g].c_str(), s.group_accuracy[g],
                  static_cast<long long>(s.group_count[g]));
    os << buf;
  }
  return os.str();
}

}  // namespace smt
