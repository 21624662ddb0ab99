// Evaluation views, their JSON and tables (see report.h).
#include "eval/report.h"

#include <cstdio>
#include <sstream>

#include "core/error.h"
#include "io/json.h"

namespace smt {

namespace {

EvalView make_view(const std::string& name, const std::vector<std::string>& class_names, std::vector<double> probs,
                   std::vector<int32_t> labels) {
  EvalView v;
  v.name = name;
  v.class_names = class_names;
  v.probs = std::move(probs);
  v.labels = std::move(labels);
  v.metrics = compute_classification_metrics(v.probs, v.labels, static_cast<int>(class_names.size()));
  return v;
}

std::string metric_cell(double v, bool defined = true) {
  char buf[32];
  if (!defined) return "       -";
  std::snprintf(buf, sizeof buf, "%8.4f", v);
  return buf;
}

}  // namespace

std::vector<EvalView> build_views(const std::vector<double>& probs, int num_classes, const Dataset& data,
                                  EvalSourceKind source) {
  const auto C = static_cast<size_t>(num_classes);
  const size_t n = data.examples.size();
  SMT_CHECK(probs.size() == n * C, "build_views: ", probs.size(), " probabilities for ", n, " examples x ", C);
  SMT_CHECK(data.num_classes() == num_classes, "build_views: the data has ", data.num_classes(),
            " classes, the predictions ", num_classes);
  std::vector<int32_t> labels(n);
  for (size_t i = 0; i < n; ++i) labels[i] = data.examples[i].label;
  std::vector<EvalView> views;
  if (source == EvalSourceKind::kLiar) {
    if (num_classes == 6) {
      views.push_back(make_view("liar6", data.class_names, probs, labels));
      std::vector<int32_t> binary(n);
      for (size_t i = 0; i < n; ++i) binary[i] = labels[i] >= 3 ? 1 : 0;
      views.push_back(make_view("liar2", {"false", "true"}, collapse_probs(probs, 6, {3, 4, 5}), binary));
    } else {
      SMT_CHECK(num_classes == 2, "build_views: LIAR predictions must have 6 or 2 classes, got ", num_classes);
      views.push_back(make_view("liar2", data.class_names, probs, labels));
    }
    return views;
  }
  views.push_back(make_view("synthetic", data.class_names, probs, labels));
  for (size_t g = 0; g < data.group_names.size(); ++g) {
    std::vector<double> gp;
    std::vector<int32_t> gl;
    for (size_t i = 0; i < n; ++i) {
      if (data.examples[i].group != static_cast<int32_t>(g)) continue;
      gp.insert(gp.end(), probs.begin() + static_cast<std::ptrdiff_t>(i * C),
                probs.begin() + static_cast<std::ptrdiff_t>((i + 1) * C));
      gl.push_back(labels[i]);
    }
    if (!gl.empty()) views.push_back(make_view(data.group_names[g], data.class_names, gp, gl));
  }
  return views;
}

std::string view_json(const EvalView& v) {
  const auto& m = v.metrics;
  JsonObject per_class;
  for (size_t c = 0; c < m.per_class.size(); ++c) {
    JsonObject pc;
    pc.add("precision", m.per_class[c].precision).add("recall", m.per_class[c].recall).add("f1", m.per_class[c].f1)
        .add("support", m.per_class[c].support);
    per_class.add(v.class_names.at(c), pc);
  }
  std::vector<std::string> rows, names;
  for (const auto& r : m.confusion) {
    std::vector<std::string> cells;
    for (int64_t x : r) cells.push_back(std::to_string(x));
    rows.push_back(json_array(cells));
  }
  for (const auto& name : v.class_names) names.push_back(json_escape(name));
  JsonObject o;
  o.add("n", m.n).add("accuracy", m.accuracy).add("macro_f1", m.macro_f1).add("per_class", per_class)
      .add_raw("confusion", json_array(rows)).add_raw("class_names", json_array(names)).add("nll", m.nll)
      .add("brier", m.brier).add("ece", m.ece);
  if (m.num_classes == 2) o.add_raw("auc", m.auc >= 0 ? json_number(m.auc) : "null");
  return o.str();
}

std::string routing_layer_json(const LayerRoutingStats& s, const LayerRoutingStats* by_group) {
  JsonObject o;
  o.add("layer", s.layer).add("moe", s.is_moe).add("experts", s.num_experts).add("top_k", s.top_k)
      .add("tokens_per_expert", s.tokens_per_expert).add("dropped", s.dropped)
      .add_raw("load_balance", s.load_balance >= 0 ? json_number(s.load_balance) : "null")
      .add("routing_entropy_bits", s.entropy).add("routing_entropy_normalized", s.entropy_normalized)
      .add("specialisation", s.specialisation).add("specialisation_shuffled", s.specialisation_shuffled);
  if (by_group) {
    o.add("specialisation_group", by_group->specialisation)
        .add("specialisation_group_shuffled", by_group->specialisation_shuffled);
  }
  return o.str();
}

std::string format_views_table(const std::vector<SystemViews>& systems) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-16s %-10s %7s %8s %8s %8s %8s %8s %8s\n", "view", "system", "n", "accuracy",
                "macro-F1", "NLL", "Brier", "ECE", "AUC");
  os << buf << std::string(91, '-') << "\n";
  if (systems.empty()) return os.str();
  for (size_t v = 0; v < systems[0].views.size(); ++v) {
    for (const auto& sys : systems) {
      if (v >= sys.views.size()) continue;
      const auto& m = sys.views[v].metrics;
      std::snprintf(buf, sizeof buf, "%-16s %-10s %7lld %s %s %s %s %s %s\n",
                    &sys == &systems[0] ? sys.views[v].name.c_str() : "", sys.system.c_str(),
                    static_cast<long long>(m.n), metric_cell(m.accuracy).c_str(), metric_cell(m.macro_f1).c_str(),
                    metric_cell(m.nll).c_str(), metric_cell(m.brier).c_str(), metric_cell(m.ece).c_str(),
                    metric_cell(m.auc, m.auc >= 0).c_str());
      os << buf;
    }
  }
  return os.str();
}

std::string format_routing_table(const std::vector<LayerRoutingStats>& layers) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-6s %-4s %12s %10s %13s %15s %9s\n", "layer", "moe", "load-balance",
                "entropy/b", "specialisation", "(shuffled)", "dropped");
  os << buf;
  for (const auto& s : layers) {
    std::snprintf(buf, sizeof buf, "%-6d %-4s %s %s %13.4f %15.4f %9lld\n", s.layer, s.is_moe ? "yes" : "no",
                  (std::string(4, ' ') + metric_cell(s.load_balance, s.load_balance >= 0)).c_str(),
                  (std::string(2, ' ') + metric_cell(s.entropy)).c_str(), s.specialisation,
                  s.specialisation_shuffled, static_cast<long long>(s.dropped));
    os << buf;
  }
  return os.str();
}

}  // namespace smt
