// `smt bench compare --config FILE [--steps N]`: the measured "dense vs sparse" comparison. Trains
// the same model (same seed, data and order) once per attention pattern on the synthetic set with
// its long-context family, each in a forked child process so that its peak memory is its own,
// and prints pattern, element density, held-out accuracy (overall, long-context), time per step
// and peak memory, each relative to dense, and each pattern's accuracy minus dense's on the same
// held-out items (paired bootstrap interval and p, McNemar). Every number is measured; none is
// derived from density.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <boost/program_options.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "app/cli.h"
#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"
#include "core/timer.h"
#include "data/batch.h"
#include "data/source.h"
#include "data/tokenizer.h"
#include "eval/evaluator.h"
#include "eval/resampling.h"
#include "eval/svg_plot.h"
#include "io/json.h"
#include "model/model.h"

namespace po = boost::program_options;

namespace smt {

namespace {

const char* const kPatterns[] = {"dense", "local", "random", "block_sparse", "bigbird"};

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"); -1 if unavailable.
int64_t proc_status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size()));
  return -1;
}

struct PatternResult {
  std::string pattern;
  double element_density = 0, block_density = 0;
  double accuracy = 0, long_context_accuracy = -1;
  int64_t long_context_n = 0;
  double step_s = 0;       // median training step
  double train_s = 0;      // all steps
  double peak_rss_mib = 0;       // VmHWM of the child
  double peak_growth_mib = 0;    // VmHWM - VmRSS before the model was built
  bool hwm_reset = false;        // the high-water mark could be reset at the start
  // The held-out predictions, for the paired comparison with dense.
  std::vector<double> probs;           // [n, C]
  std::vector<int32_t> labels;         // [n]
  std::vector<uint8_t> is_long;        // [n] 1 for a long-context item
  int num_classes = 0;
};

// Space-separated values of a "key v0 v1 ..." line.
template <typename T>
std::vector<T> parse_values(const std::string& text) {
  std::vector<T> out;
  std::istringstream is(text);
  for (double v; is >> v;) out.push_back(static_cast<T>(v));
  return out;
}

// Runs in the child: train, evaluate, measure; returns "key value" lines.
std::string run_pattern(RunConfig cfg, const std::string& pattern) {
  const bool hwm_reset = [] {
    std::ofstream f("/proc/self/clear_refs");
    f << "5";  // resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    f.flush();
    return f.good();
  }();
  cfg.model.attention = pattern;
  set_num_threads(cfg.train.threads);
  DataSplits data = load_data(cfg.data, cfg.seed, make_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size));
  cfg.model.num_classes = data.train.num_classes();
  const int64_t rss_before = proc_status_kib("VmRSS");
  Model model(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  model.init_params(cfg.seed);
  DataLoader loader(data.train, cfg.seed, cfg.train.batch_size, cfg.train.seq_len, cfg.data.pack);
  std::vector<double> step_times;
  Timer total;
  for (int64_t step = 1; step <= cfg.train.steps; ++step) {
    Timer t;
    const Batch batch = loader.next();
    model.zero_grads();
    const LossParts loss = model.forward(batch);
    SMT_CHECK(std::isfinite(loss.total), pattern, ": non-finite loss at step ", step);
    model.backward();
    optimizer_step(model, cfg.train, step);
    step_times.push_back(t.seconds());
  }
  const double train_s = total.seconds();
  const int64_t hwm = proc_status_kib("VmHWM");  // training only (evaluation batches are larger)
  const Predictions pred = predict(model, data.heldout, cfg.train.seq_len, cfg.train.eval_batch_size);
  const EvalSummary s = summarize(pred, data.heldout);
  // median over the steps after the first 3 (warm-up of caches and allocations)
  std::vector<double> timed(step_times.begin() + std::min<size_t>(3, step_times.size() - 1), step_times.end());
  std::sort(timed.begin(), timed.end());
  const BlockMask& mask = model.block_mask(0, static_cast<int>(cfg.train.seq_len));
  std::ostringstream os;
  os.precision(10);
  os << "element_density " << mask.element_density() << "\nblock_density " << mask.block_density() << "\naccuracy "
     << s.overall.accuracy << "\nstep_s " << timed[timed.size() / 2] << "\ntrain_s " << train_s << "\npeak_rss_mib "
     << hwm / 1024.0 << "\npeak_growth_mib " << (hwm - rss_before) / 1024.0 << "\nhwm_reset " << hwm_reset << "\n";
  for (size_t g = 0; g < s.group_names.size(); ++g)
    if (s.group_names[g] == "long_context" && s.group_count[g] > 0)
      os << "long_context_accuracy " << s.group_accuracy[g] << "\nlong_context_n " << s.group_count[g] << "\n";
  os.precision(17);  // the probabilities round-trip exactly
  os << "num_classes " << pred.num_classes << "\nprobs";
  for (float p : pred.probs) os << ' ' << p;
  os << "\nlabels";
  for (int32_t y : pred.labels) os << ' ' << y;
  os << "\nis_long";
  for (int32_t g : pred.groups)
    os << ' ' << (g >= 0 && data.heldout.group_names.at(static_cast<size_t>(g)) == "long_context" ? 1 : 0);
  os << "\n";
  return os.str();
}

PatternResult run_in_child(const RunConfig& cfg, const std::string& pattern) {
  int fds[2];
  SMT_CHECK(pipe(fds) == 0, "bench compare: pipe failed: ", std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  SMT_CHECK(pid >= 0, "bench compare: fork failed: ", std::strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    int code = 0;
    std::string out;
    try {
      out = run_pattern(cfg, pattern);
    } catch (const std::exception& e) {
      out = std::string("error ") + e.what() + "\n";
      code = 1;
    }
    size_t off = 0;
    while (off < out.size()) {
      const ssize_t w = write(fds[1], out.data() + off, out.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    close(fds[1]);
    _exit(code);
  }
  close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(r));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::map<std::string, std::string> kv;
  std::istringstream is(text);
  for (std::string line; std::getline(is, line);) {
    const auto sp = line.find(' ');
    if (sp != std::string::npos) kv[line.substr(0, sp)] = line.substr(sp + 1);
  }
  SMT_CHECK(!kv.count("error"), "bench compare: ", pattern, ": ", kv["error"]);
  SMT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && kv.count("accuracy"), "bench compare: the ", pattern,
            " run failed (", WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status)) : "no result", ")");
  PatternResult r;
  r.pattern = pattern;
  r.element_density = std::stod(kv["element_density"]);
  r.block_density = std::stod(kv["block_density"]);
  r.accuracy = std::stod(kv["accuracy"]);
  if (kv.count("long_context_accuracy")) {
    r.long_context_accuracy = std::stod(kv["long_context_accuracy"]);
    r.long_context_n = std::stoll(kv["long_context_n"]);
  }
  r.step_s = std::stod(kv["step_s"]);
  r.train_s = std::stod(kv["train_s"]);
  r.peak_rss_mib = std::stod(kv["peak_rss_mib"]);
  r.peak_growth_mib = std::stod(kv["peak_growth_mib"]);
  r.hwm_reset = kv["hwm_reset"] == "1";
  r.num_classes = std::stoi(kv["num_classes"]);
  r.probs = parse_values<double>(kv["probs"]);
  r.labels = parse_values<int32_t>(kv["labels"]);
  r.is_long = parse_values<uint8_t>(kv["is_long"]);
  SMT_CHECK(r.num_classes > 0 && r.probs.size() == r.labels.size() * static_cast<size_t>(r.num_classes) &&
                r.is_long.size() == r.labels.size(),
            "bench compare: the ", pattern, " run returned incomplete predictions");
  return r;
}

// A pattern against dense on the same held-out items: all of them and the long-context ones.
struct DenseComparison {
  PairedComparison all, long_context;
  bool has_long_context = false;
};

DenseComparison compare_with_dense(const PatternResult& r, const PatternResult& dense, const BootstrapSettings& bs) {
  SMT_CHECK(r.labels == dense.labels, "bench compare: ", r.pattern, " was scored on other held-out items than dense");
  DenseComparison c;
  c.all = compare_paired(WeightedScorer(r.probs, r.labels, r.num_classes),
                         WeightedScorer(dense.probs, dense.labels, dense.num_classes), bs);
  // The long-context rows of probs [n, C].
  const auto C = static_cast<size_t>(r.num_classes);
  auto long_rows = [&](const std::vector<double>& probs) {
    std::vector<double> out;
    for (size_t i = 0; i < r.labels.size(); ++i)
      if (r.is_long[i]) out.insert(out.end(), probs.begin() + static_cast<std::ptrdiff_t>(i * C),
                                   probs.begin() + static_cast<std::ptrdiff_t>((i + 1) * C));
    return out;
  };
  std::vector<int32_t> labels;
  for (size_t i = 0; i < r.labels.size(); ++i)
    if (r.is_long[i]) labels.push_back(r.labels[i]);
  c.has_long_context = !labels.empty();
  if (c.has_long_context)
    c.long_context = compare_paired(WeightedScorer(long_rows(r.probs), labels, r.num_classes),
                                    WeightedScorer(long_rows(dense.probs), labels, r.num_classes), bs);
  return c;
}

std::string accuracy_difference_json(const PairedComparison& p) {
  JsonObject o;
  o.add("difference", p.accuracy.value).add_raw("ci95", json_array({json_number(p.accuracy.ci.lo),
                                                                    json_number(p.accuracy.ci.hi)}))
      .add("p", p.accuracy.p).add("only_pattern_correct", p.only_a_correct).add("only_dense_correct", p.only_b_correct)
      .add("mcnemar_p", p.mcnemar_p);
  return o.str();
}

std::string ratio(double v, double base) {
  char buf[32];
  if (base <= 0 || v < 0) return "     -";
  std::snprintf(buf, sizeof buf, "%5.2fx", v / base);
  return buf;
}

}  // namespace

int cmd_bench_compare(int argc, char** argv) {
  int64_t steps = 0;
  std::string out_path;
  BootstrapSettings bootstrap;
  std::string patterns_arg = "dense,local,random,block_sparse,bigbird";
  po::options_description extra("Compare");
  extra.add_options()("steps", po::value(&steps)->default_value(steps), "training steps per pattern (0: train.steps)")(
      "patterns", po::value(&patterns_arg)->default_value(patterns_arg), "comma-separated patterns (dense first)")(
      "out", po::value(&out_path), "JSON file (default: <run.dir>/compare.json)")(
      "bootstrap", po::value(&bootstrap.resamples)->default_value(bootstrap.resamples),
      "resamples of the held-out items for each pattern's accuracy minus dense's (>= 100)")(
      "bootstrap-seed", po::value(&bootstrap.seed)->default_value(bootstrap.seed), "seed of the resamples");
  RunConfig cfg;
  if (!parse_run_config(argc, argv, "bench compare", "--config FILE [--steps N] [--section.key=value ...]", cfg,
                        &extra))
    return 0;
  SMT_USAGE_CHECK(steps >= 0, "--steps must be >= 0, got ", steps);
  SMT_USAGE_CHECK(bootstrap.resamples >= 100 && bootstrap.resamples <= 1000000,
                  "--bootstrap must be between 100 and 1000000, got ", bootstrap.resamples);
  SMT_USAGE_CHECK(bootstrap.seed <= static_cast<uint64_t>(INT64_MAX), "--bootstrap-seed must be in [0, 2^63)");
  if (steps > 0) cfg.train.steps = steps;
  SMT_USAGE_CHECK(cfg.data.source == "synthetic", "bench compare trains on the synthetic set (data.source = ",
                  cfg.data.source, ")");
  SMT_USAGE_CHECK(cfg.model.head == "classifier", "bench compare needs model.head = classifier");
  SMT_USAGE_CHECK(cfg.data.long_context_fraction > 0,
                  "bench compare needs long-context items (data.long_context_fraction > 0)");
  std::vector<std::string> patterns;
  {
    std::istringstream is(patterns_arg);
    for (std::string p; std::getline(is, p, ',');) {
      parse_attn_pattern(p);  // UsageError on unknown names
      patterns.push_back(p);
    }
  }
  SMT_USAGE_CHECK(!patterns.empty() && patterns[0] == "dense", "--patterns must start with dense (the reference)");
  for (const auto& p : patterns) {  // every variant must be a valid config before anything runs
    RunConfig c = cfg;
    c.model.attention = p;
    c.validate();
  }
  if (out_path.empty()) out_path = cfg.run_dir + "/compare.json";
  {
    std::error_code ec;
    const auto parent = std::filesystem::path(out_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::ofstream probe(out_path + ".tmp");
    SMT_USAGE_CHECK(probe.good(), "cannot write ", out_path);
  }
  std::filesystem::remove(out_path + ".tmp");

  log_info("bench compare: " + std::to_string(patterns.size()) + " patterns x " + std::to_string(cfg.train.steps) +
           " steps, seq_len " + std::to_string(cfg.train.seq_len) + ", " + std::to_string(cfg.data.synthetic_train) +
           " training items (long-context fraction " + std::to_string(cfg.data.long_context_fraction) + ", " +
           std::to_string(cfg.data.long_context_chars) + " chars)");
  std::vector<PatternResult> results;
  for (const auto& p : patterns) {
    results.push_back(run_in_child(cfg, p));
    const auto& r = results.back();
    char line[200];
    std::snprintf(line, sizeof line, "  %-13s accuracy %.4f  long-context %.4f  %.4f s/step  peak +%.1f MiB",
                  p.c_str(), r.accuracy, r.long_context_accuracy, r.step_s, r.peak_growth_mib);
    log_info(line);
  }
  const PatternResult& base = results[0];
  std::ostringstream table;
  char buf[320];
  std::snprintf(buf, sizeof buf, "%-13s %8s %7s %9s %7s %9s %7s %9s %7s %10s %7s\n", "pattern", "density", "rel",
                "accuracy", "rel", "long-ctx", "rel", "s/step", "rel", "peak MiB", "rel");
  table << buf << std::string(101, '-') << "\n";
  std::vector<std::string> json_rows;
  std::ostringstream paired;
  std::snprintf(buf, sizeof buf, "%-13s %10s  %-20s %7s %9s   %10s  %-20s %7s %9s\n", "pattern", "accuracy",
                "95% interval", "p", "McNemar", "long-ctx", "95% interval", "p", "McNemar");
  paired << buf << std::string(118, '-') << "\n";
  for (const auto& r : results) {
    std::snprintf(buf, sizeof buf, "%-13s %8.4f %7s %9.4f %7s %9.4f %7s %9.4f %7s %10.1f %7s\n", r.pattern.c_str(),
                  r.element_density, ratio(r.element_density, base.element_density).c_str(), r.accuracy,
                  ratio(r.accuracy, base.accuracy).c_str(), r.long_context_accuracy,
                  ratio(r.long_context_accuracy, base.long_context_accuracy).c_str(), r.step_s,
                  ratio(r.step_s, base.step_s).c_str(), r.peak_growth_mib,
                  ratio(r.peak_growth_mib, base.peak_growth_mib).c_str());
    table << buf;
    JsonObject o;
    o.add("pattern", r.pattern).add("element_density", r.element_density).add("block_density", r.block_density)
        .add("accuracy", r.accuracy).add_raw("long_context_accuracy", r.long_context_accuracy >= 0 ? json_number(r.long_context_accuracy) : "null")
        .add("long_context_n", r.long_context_n).add("step_s", r.step_s).add("train_s", r.train_s)
        .add("peak_rss_mib", r.peak_rss_mib).add("peak_growth_mib", r.peak_growth_mib)
        .add("rel_step_s", r.step_s / base.step_s).add("rel_peak_growth", r.peak_growth_mib / base.peak_growth_mib)
        .add("rel_accuracy", r.accuracy / base.accuracy).add("peak_hwm_reset", r.hwm_reset);
    if (&r != &base) {
      const DenseComparison c = compare_with_dense(r, base, bootstrap);
      JsonObject minus_dense;
      minus_dense.add_raw("accuracy", accuracy_difference_json(c.all))
          .add_raw("long_context_accuracy", c.has_long_context ? accuracy_difference_json(c.long_context) : "null");
      o.add("minus_dense", minus_dense);
      auto cells = [](const PairedComparison& p) {
        char b[96];
        std::snprintf(b, sizeof b, "%+10.4f  [%+.4f, %+.4f] %7.4f %9.3g", p.accuracy.value, p.accuracy.ci.lo,
                      p.accuracy.ci.hi, p.accuracy.p, p.mcnemar_p);
        return std::string(b);
      };
      std::snprintf(buf, sizeof buf, "%-13s %s   %s\n", r.pattern.c_str(), cells(c.all).c_str(),
                    c.has_long_context ? cells(c.long_context).c_str() : "         -");
      paired << buf;
    }
    json_rows.push_back(o.str());
  }
  JsonObject report;
  report.add("steps", cfg.train.steps).add("seq_len", cfg.train.seq_len).add("batch_size", cfg.train.batch_size)
      .add("threads", cfg.train.threads).add("d_model", cfg.model.d_model).add("layers", cfg.model.layers)
      .add("experts", cfg.model.experts).add("block_size", cfg.model.block_size).add("window", cfg.model.window)
      .add("synthetic_train", cfg.data.synthetic_train).add("synthetic_heldout", cfg.data.synthetic_heldout)
      .add("long_context_chars", cfg.data.long_context_chars)
      .add("memory", "peak_growth_mib = VmHWM - VmRSS of a forked child per pattern, the high-water mark reset at "
                     "its start, the baseline read after the data were generated, the peak read after the last "
                     "training step (model, optimizer state, activations, workspace); step_s = median step after 3 warm-up steps")
      .add("bootstrap_resamples", bootstrap.resamples).add("bootstrap_seed", static_cast<int64_t>(bootstrap.seed))
      .add_raw("patterns", json_array(json_rows));
  write_text_file(out_path + ".tmp", report.str() + "\n");
  std::filesystem::rename(out_path + ".tmp", out_path);
  std::cout << "\n" << table.str() << "\nelement density of layer 0 at seq_len " << cfg.train.seq_len
            << "; accuracy on the held-out split (" << cfg.data.synthetic_heldout << " items, long-context n = "
            << base.long_context_n << "); s/step = median training step; peak MiB = peak RSS growth while training "
            << "(model, AdamW state, activations), measured per pattern in its own process. rel = relative to dense.\n";
  if (results.size() > 1)
    std::cout << "\naccuracy minus dense on the same held-out items (paired bootstrap, " << bootstrap.resamples
              << " resamples, seed " << bootstrap.seed << "; p two-sided; McNemar exact)\n"
              << paired.str();
  std::cout << "JSON: " << out_path << "\n";
  return 0;
}

}  // namespace smt
