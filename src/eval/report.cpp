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

void add_intervals(std::vector<EvalView>& views, const BootstrapSettings& settings) {
  SMT_CHECK(settings.level == 0.95, "add_intervals: the report's intervals are 95%, got level ", settings.level);
  for (EvalView& v : views) {
    v.intervals = bootstrap_intervals(WeightedScorer(v.probs, v.labels, v.metrics.num_classes), settings);
    v.has_intervals = true;
  }
}

namespace {

std::string interval_json(const Interval& i) { return json_array({json_number(i.lo), json_number(i.hi)}); }

std::string difference_json(const Difference& d) {
  JsonObject o;
  o.add("difference", d.value).add_raw("ci95", interval_json(d.ci)).add("p", d.p);
  return o.str();
}

}  // namespace

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
  if (v.has_intervals) {
    const MetricIntervals& ci = v.intervals;
    JsonObject c;
    c.add_raw("accuracy", interval_json(ci.accuracy)).add_raw("macro_f1", interval_json(ci.macro_f1))
        .add_raw("nll", interval_json(ci.nll));
    if (m.num_classes == 2) c.add_raw("auc", ci.has_auc ? interval_json(ci.auc) : "null");
    o.add("ci95", c);
  }
  return o.str();
}

std::vector<ViewComparison> compare_with_baselines(const std::vector<SystemViews>& systems,
                                                   const BootstrapSettings& settings) {
  std::vector<ViewComparison> out;
  if (systems.empty()) return out;
  const SystemViews& model = systems[0];
  for (const EvalView& mv : model.views) {
    const WeightedScorer model_scorer(mv.probs, mv.labels, mv.metrics.num_classes);
    for (size_t s = 1; s < systems.size(); ++s)
      for (const EvalView& bv : systems[s].views) {
        if (bv.name != mv.name) continue;
        const WeightedScorer baseline_scorer(bv.probs, bv.labels, bv.metrics.num_classes);
        out.push_back({mv.name, systems[s].system, compare_paired(model_scorer, baseline_scorer, settings)});
      }
  }
  return out;
}

std::string comparison_json(const ViewComparison& c) {
  const PairedComparison& p = c.paired;
  JsonObject mcnemar;
  mcnemar.add("model_only_correct", p.only_a_correct).add("baseline_only_correct", p.only_b_correct)
      .add("p", p.mcnemar_p);
  JsonObject o;
  o.add_raw("accuracy", difference_json(p.accuracy)).add_raw("macro_f1", difference_json(p.macro_f1))
      .add_raw("nll", difference_json(p.nll));
  if (p.has_auc) o.add_raw("auc", difference_json(p.auc));
  else o.add_raw("auc", "null");
  o.add("mcnemar", mcnemar);
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

std::string format_intervals_table(const std::vector<SystemViews>& systems) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-16s %-10s %-18s  %-18s  %-18s\n", "view", "system", "accuracy", "macro-F1", "AUC");
  os << buf << std::string(86, '-') << "\n";
  auto cell = [](const Interval& i, bool defined) {
    char b[40];
    if (!defined) return std::string("-");
    std::snprintf(b, sizeof b, "[%.4f, %.4f]", i.lo, i.hi);
    return std::string(b);
  };
  if (systems.empty()) return os.str();
  for (size_t v = 0; v < systems[0].views.size(); ++v)
    for (const auto& sys : systems) {
      if (v >= sys.views.size() || !sys.views[v].has_intervals) continue;
      const EvalView& view = sys.views[v];
      const MetricIntervals& ci = view.intervals;
      std::snprintf(buf, sizeof buf, "%-16s %-10s %-18s  %-18s  %-18s\n",
                    &sys == &systems[0] ? view.name.c_str() : "", sys.system.c_str(), cell(ci.accuracy, true).c_str(),
                    cell(ci.macro_f1, true).c_str(), cell(ci.auc, ci.has_auc).c_str());
      os << buf;
    }
  return os.str();
}

std::string format_comparisons_table(const std::vector<ViewComparison>& comparisons) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-16s %-10s %-9s %11s  %-20s  %7s\n", "view", "baseline", "metric", "difference",
                "95% interval", "p");
  os << buf << std::string(80, '-') << "\n";
  std::string last_view;
  for (const ViewComparison& c : comparisons) {
    const PairedComparison& p = c.paired;
    const std::pair<const char*, const Difference*> rows[] = {
        {"accuracy", &p.accuracy}, {"macro-F1", &p.macro_f1}, {"NLL", &p.nll}, {"AUC", p.has_auc ? &p.auc : nullptr}};
    bool first = true;
    for (const auto& [metric, d] : rows) {
      if (d == nullptr) continue;
      std::snprintf(buf, sizeof buf, "%-16s %-10s %-9s %+11.4f  [%+.4f, %+.4f]  %7.4f\n",
                    first && c.view != last_view ? c.view.c_str() : "", first ? c.baseline.c_str() : "", metric,
                    d->value, d->ci.lo, d->ci.hi, d->p);
      os << buf;
      first = false;
    }
    std::snprintf(buf, sizeof buf, "%-27s McNemar: model alone right %lld, baseline alone right %lld, p %.4g\n", "",
                  static_cast<long long>(p.only_a_correct), static_cast<long long>(p.only_b_correct), p.mcnemar_p);
    os << buf;
    last_view = c.view;
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
