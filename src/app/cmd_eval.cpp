// `smt eval --checkpoint FILE --data SPEC [--out DIR]`: batched inference of a checkpoint's
// classifier on a LIAR .tsv or the synthetic held-out split, then report.json (metric views,
// routing, attention, baselines), SVG plots and a readable table. Every usage problem (missing
// files, a head that does not fit the data, an empty set) is found before the model runs.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>

#include "app/cli.h"
#include "app/cuda_device.h"
#include "app/gpu_inference.h"
#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"
#include "core/timer.h"
#include "data/liar.h"
#include "data/tokenizer.h"
#include "data/synthetic.h"
#include "eval/baseline_ngram.h"
#include "eval/evaluator.h"
#include "eval/report.h"
#include "eval/svg_plot.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "model/model.h"
#include "model/param_layout.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace smt {

namespace {

struct DataSpec {
  EvalSourceKind kind = EvalSourceKind::kSynthetic;
  std::string path;       // liar
  bool has_seed = false;  // synthetic
  uint64_t seed = 0;
  std::string tag;        // for the default output folder
};

DataSpec parse_data_spec(const std::string& spec) {
  DataSpec d;
  if (spec.rfind("liar:", 0) == 0) {
    d.kind = EvalSourceKind::kLiar;
    d.path = spec.substr(5);
    SMT_USAGE_CHECK(!d.path.empty(), "--data liar:PATH.tsv needs a path");
    SMT_USAGE_CHECK(fs::is_regular_file(d.path), "LIAR file not found: ", d.path);
    d.tag = fs::path(d.path).stem().string();
    return d;
  }
  if (spec == "synthetic" || spec.rfind("synthetic:", 0) == 0) {
    d.kind = EvalSourceKind::kSynthetic;
    d.tag = "synthetic";
    if (spec.size() > 10) {
      const std::string s = spec.substr(10);
      SMT_USAGE_CHECK(s.find_first_not_of("0123456789") == std::string::npos && s.size() <= 19,
                      "--data synthetic:SEED needs a non-negative integer seed, got '", s, "'");
      d.has_seed = true;
      d.seed = std::stoull(s);
      d.tag += "-" + s;
    }
    return d;
  }
  throw UsageError("--data must be liar:PATH.tsv or synthetic[:SEED], got '" + spec + "'");
}

std::string default_out_dir(const std::string& checkpoint, const std::string& tag) {
  const fs::path ck = fs::absolute(checkpoint);
  fs::path dir = ck.parent_path();
  if (dir.filename() == "checkpoints") dir = dir.parent_path();
  return (dir / ("eval-" + ck.stem().string() + "-" + tag)).string();
}

// Label frequencies of `train` as every example's probabilities: the majority-class baseline
// (argmax = the training majority, ties to the lowest index) with honest NLL/Brier.
std::vector<double> prior_probs(const Dataset& train, size_t n) {
  const auto counts = train.label_counts();
  double total = 0;
  for (int64_t c : counts) total += static_cast<double>(c);
  std::vector<double> row(counts.size());
  for (size_t c = 0; c < counts.size(); ++c) row[c] = static_cast<double>(counts[c]) / total;
  std::vector<double> out;
  out.reserve(n * row.size());
  for (size_t i = 0; i < n; ++i) out.insert(out.end(), row.begin(), row.end());
  return out;
}

std::string views_object(const std::vector<EvalView>& views) {
  JsonObject o;
  for (const auto& v : views) o.add_raw(v.name, view_json(v));
  return o.str();
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  write_text_file(tmp, text);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  SMT_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  std::string checkpoint, data_spec, out_dir, device = "cpu";
  int threads = -1;
  int64_t batch_size = 0;
  BootstrapSettings bootstrap;
  po::options_description desc(
      "usage: smt eval --checkpoint FILE --data liar:PATH.tsv|synthetic[:SEED] [--out DIR]\n\n"
      "Scores a classifier checkpoint: prints a table and writes DIR/report.json and SVG plots\n"
      "(default DIR: <run>/eval-<checkpoint stem>-<data>, <run> being the folder above checkpoints/).\n"
      "synthetic uses the held-out split of the checkpoint's generator settings (seed: the checkpoint's).\n\n"
      "Options");
  desc.add_options()("help,h", "print this help")("checkpoint", po::value(&checkpoint), "checkpoint file (.h5)")(
      "data", po::value(&data_spec), "liar:PATH.tsv or synthetic[:SEED]")(
      "out", po::value(&out_dir), "output folder (created)")(
      "threads", po::value(&threads)->default_value(threads), "CPU threads (-1: the checkpoint's train.threads, 0: all)")(
      "batch-size", po::value(&batch_size)->default_value(batch_size),
      "examples per forward (0: the checkpoint's train.eval_batch_size)")(
      "device", po::value(&device)->default_value(device), "cpu | cuda (fp32 inference on CUDA device 0)")(
      "bootstrap", po::value(&bootstrap.resamples)->default_value(bootstrap.resamples),
      "resamples of the examples for 95% intervals and the paired model-vs-baseline tests (0: none; else >= 100)")(
      "bootstrap-seed", po::value(&bootstrap.seed)->default_value(bootstrap.seed), "seed of the resamples");
  if (!parse_command_options(argc, argv, desc)) return 0;
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    const char* v = std::getenv(var);
    SMT_USAGE_CHECK(v == nullptr || std::atoi(v) <= 1, "smt eval runs as one process (", var, " = ", v,
                    "); start it without mpirun/srun");
  }
  SMT_USAGE_CHECK(!checkpoint.empty(), "--checkpoint FILE is required (smt eval --help)");
  SMT_USAGE_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device, "'");
  const int cuda_device = device == "cuda" ? usable_cuda_device() : -1;  // refused before reading anything
  SMT_USAGE_CHECK(!data_spec.empty(), "--data liar:PATH.tsv or --data synthetic is required (smt eval --help)");
  SMT_USAGE_CHECK(batch_size >= 0, "--batch-size must be >= 0, got ", batch_size);
  SMT_USAGE_CHECK(bootstrap.resamples == 0 || (bootstrap.resamples >= 100 && bootstrap.resamples <= 1000000),
                  "--bootstrap must be 0 (no intervals) or between 100 and 1000000, got ", bootstrap.resamples);
  SMT_USAGE_CHECK(bootstrap.seed <= static_cast<uint64_t>(INT64_MAX), "--bootstrap-seed must be in [0, 2^63)");
  const bool with_intervals = bootstrap.resamples > 0;
  SMT_USAGE_CHECK(fs::is_regular_file(checkpoint), "checkpoint not found: ", checkpoint);
  const DataSpec spec = parse_data_spec(data_spec);

  RunConfig cfg;
  {
    CheckpointReader reader(checkpoint);
    cfg = reader.config();
  }
  const ModelConfig& mc = cfg.model;
  SMT_USAGE_CHECK(mc.head == "classifier", "checkpoint ", checkpoint, " has a language-model head (model.head = ",
                  mc.head, "); smt eval scores classifiers: fine-tune it with a classifier head first");
  if (spec.kind == EvalSourceKind::kSynthetic) {
    SMT_USAGE_CHECK(mc.num_classes == 2, "checkpoint ", checkpoint, " has a ", mc.num_classes,
                    "-way head but the synthetic set has 2 classes (true/false)");
  } else {
    SMT_USAGE_CHECK(mc.num_classes == 6 || mc.num_classes == 2, "checkpoint ", checkpoint, " has a ", mc.num_classes,
                    "-way head but LIAR has 6 classes (or 2 in its binary view)");
  }
  if (const std::string scored = spec.kind == EvalSourceKind::kLiar ? "liar" : "synthetic"; cfg.data.source != scored)
    log_info("note: " + checkpoint + " was trained on data.source = " + cfg.data.source + " and is scored on " +
             scored + ": the numbers measure transfer to other data");
  if (out_dir.empty()) out_dir = default_out_dir(checkpoint, spec.tag);

  // Data: the evaluated set and the training split the baselines learn from.
  // `data` and `train` are byte-encoded (the n-gram baseline reads their text back);
  // `model_data` is `data` encoded with the checkpoint's tokenizer, what the model reads.
  const Tokenizer model_tokenizer = make_tokenizer(cfg.data.tokenizer, mc.vocab_size);
  const bool reencode = model_tokenizer.kind != TokenizerKind::kBytes;
  Dataset data, train, model_data;
  bool have_train = false;
  std::string train_source;
  if (spec.kind == EvalSourceKind::kLiar) {
    const LiarFields fields = parse_liar_fields(cfg.data.fields);
    const bool binary = mc.num_classes == 2;
    const auto records = read_liar_tsv(spec.path);
    SMT_USAGE_CHECK(!records.empty(), "data set ", spec.path, " is empty (no LIAR rows)");
    data = make_liar_dataset(records, fields, binary, "liar:" + spec.tag);
    if (reencode) model_data = make_liar_dataset(records, fields, binary, "liar:" + spec.tag, model_tokenizer);
    const fs::path train_path = fs::path(spec.path).parent_path() / "train.tsv";
    if (fs::is_regular_file(train_path)) {
      train = make_liar_dataset(read_liar_tsv(train_path.string()), fields, binary, "liar:train");
      have_train = !train.examples.empty();
      train_source = train_path.string();
    }
  } else {
    SyntheticConfig sc;
    sc.seed = spec.has_seed ? spec.seed : cfg.seed;
    sc.num_train = cfg.data.synthetic_train;
    sc.num_heldout = cfg.data.synthetic_heldout;
    sc.long_context_fraction = cfg.data.long_context_fraction;
    sc.long_context_chars = cfg.data.long_context_chars;
    SMT_USAGE_CHECK(sc.num_heldout > 0, "data set synthetic is empty (the checkpoint's data.synthetic_heldout = ",
                    sc.num_heldout, ")");
    const auto heldout_items = generate_synthetic(sc, SyntheticSplit::kHeldout);
    data = make_synthetic_dataset(heldout_items, "synthetic:heldout");
    if (reencode) model_data = make_synthetic_dataset(heldout_items, "synthetic:heldout", model_tokenizer);
    if (sc.num_train > 0) {
      train = make_synthetic_dataset(generate_synthetic(sc, SyntheticSplit::kTrain), "synthetic:train");
      have_train = true;
      train_source = "synthetic train split, seed " + std::to_string(sc.seed);
    }
  }
  SMT_USAGE_CHECK(!data.examples.empty(), "data set ", data_spec, " is empty");

  set_num_threads(threads >= 0 ? threads : cfg.train.threads);
  if (batch_size == 0) batch_size = cfg.train.eval_batch_size;
  const int64_t seq_len = cfg.train.seq_len;
  Model model(mc, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  load_parameters_only(checkpoint, model);
  const int64_t step = CheckpointReader(checkpoint).state().step;
  // Inference on the CPU model itself or on a GPU copy of it (refused here, before anything is written).
  std::unique_ptr<InferenceModel> inference;
  if (cuda_device >= 0) inference = make_cuda_inference(model, cfg.seed, cuda_device);
  else inference = std::make_unique<CpuInference>(model);
  {  // created only once the inputs are known to be good
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    SMT_USAGE_CHECK(!ec && fs::is_directory(out_dir), "cannot create output folder ", out_dir,
                    ec ? ": " + ec.message() : "");
  }
  log_info("smt eval: " + checkpoint + " (step " + std::to_string(step) + ", " + std::to_string(mc.num_classes) +
           "-way head) on " + data.name + ", " + std::to_string(data.examples.size()) + " examples, " +
           std::to_string(num_threads()) + " threads, device " + device);

  // Model predictions.
  Timer timer;
  const int64_t n = static_cast<int64_t>(data.examples.size());
  Progress progress(n);
  const Predictions pred = predict(*inference, reencode ? model_data : data, seq_len, batch_size, [&](int64_t done, int64_t total) {
    char info[120];
    std::snprintf(info, sizeof info, "eval %lld/%lld examples  %.0f ex/s", static_cast<long long>(done),
                  static_cast<long long>(total), static_cast<double>(done) / std::max(1e-9, timer.seconds()));
    progress.update(done, info, done == total);
  });
  progress.finish();
  const double infer_seconds = timer.seconds();
  const std::vector<double> probs(pred.probs.begin(), pred.probs.end());
  std::vector<EvalView> views = build_views(probs, mc.num_classes, data, spec.kind);
  if (with_intervals) add_intervals(views, bootstrap);

  // Routing: per layer, over non-PAD tokens; specialisation against the label (and the claim family).
  std::vector<int32_t> labels(static_cast<size_t>(n)), groups(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = data.examples[i].label;
    groups[i] = data.examples[i].group;
  }
  const bool by_group = data.group_names.size() > 1;
  std::vector<LayerRoutingStats> routing;
  std::vector<std::string> routing_json, layer_names;
  std::vector<std::vector<int64_t>> load;
  for (int l = 0; l < mc.layers; ++l) {
    const bool moe = ParamLayout::layer_is_moe(mc, l);
    LayerRoutingStats s = layer_routing_stats(l, moe, pred.experts_per_layer[l], moe ? mc.top_k : 1,
                                              pred.expert_counts[l], labels, mc.num_classes);
    s.dropped = pred.dropped[l];
    LayerRoutingStats g;
    if (by_group)
      g = layer_routing_stats(l, moe, pred.experts_per_layer[l], moe ? mc.top_k : 1, pred.expert_counts[l], groups,
                              static_cast<int>(data.group_names.size()));
    routing_json.push_back(routing_layer_json(s, by_group ? &g : nullptr));
    routing.push_back(s);
    if (moe) {
      layer_names.push_back("layer " + std::to_string(l));
      load.push_back(s.tokens_per_expert);
    }
  }
  // Attention patterns at the evaluated sequence length.
  std::vector<std::string> attention_json;
  for (int l = 0; l < mc.layers; ++l) {
    const BlockMask& mask = model.block_mask(l, static_cast<int>(seq_len));
    JsonObject a;
    a.add("layer", l).add("pattern", attn_pattern_name(mask.config.kind)).add("causal", mask.config.causal)
        .add("seq_len", static_cast<int64_t>(seq_len)).add("block_size", mask.block_size)
        .add("element_density", mask.element_density()).add("block_density", mask.block_density());
    attention_json.push_back(a.str());
  }

  // Baselines on the same set, trained on the same source's training split.
  std::vector<SystemViews> systems{{"model", views}};
  JsonObject baselines;
  std::vector<RocSeries> roc_series;
  for (const auto& v : views)
    if (v.metrics.num_classes == 2 && (v.name == "liar2" || v.name == "synthetic")) {
      std::vector<double> scores;
      for (size_t i = 0; i < v.labels.size(); ++i) scores.push_back(v.probs[2 * i + 1]);
      const RocCurve rc = roc_curve(scores, v.labels);
      roc_series.push_back({"model, " + v.name, rc.fpr, rc.tpr, v.metrics.auc});
    }
  if (have_train) {
    auto majority = build_views(prior_probs(train, static_cast<size_t>(n)), mc.num_classes, data, spec.kind);
    if (with_intervals) add_intervals(majority, bootstrap);
    systems.push_back({"majority", majority});
    JsonObject maj;
    maj.add("description", "training-split label frequencies as probabilities (argmax = training majority class)")
        .add("majority_label", train.class_names.at(static_cast<size_t>(train.majority_label())))
        .add_raw("views", views_object(majority));
    baselines.add("majority", maj);
    Timer lr_timer;
    log_info("fitting the n-gram baseline on " + train_source + " (" + std::to_string(train.examples.size()) +
             " examples)");
    NgramLogisticRegression lr;
    lr.fit(train);
    auto ngram = build_views(lr.predict_proba(data), mc.num_classes, data, spec.kind);
    if (with_intervals) add_intervals(ngram, bootstrap);
    systems.push_back({"ngram-lr", ngram});
    const NgramBaselineConfig bc;
    JsonObject ng;
    ng.add("description", "hashed word 1-2-grams + char 3-5-grams, multinomial logistic regression (L-BFGS)")
        .add("hash_bits", bc.hash_bits).add("l2", bc.l2).add("iterations", lr.iterations())
        .add("train_loss", lr.final_loss()).add("train_examples", static_cast<int64_t>(train.examples.size()))
        .add("train_source", train_source).add("seconds", lr_timer.seconds()).add_raw("views", views_object(ngram));
    baselines.add("ngram_lr", ng);
    for (const auto& v : ngram)
      if (v.metrics.num_classes == 2 && (v.name == "liar2" || v.name == "synthetic")) {
        std::vector<double> scores;
        for (size_t i = 0; i < v.labels.size(); ++i) scores.push_back(v.probs[2 * i + 1]);
        const RocCurve rc = roc_curve(scores, v.labels);
        roc_series.push_back({"n-gram LR, " + v.name, rc.fpr, rc.tpr, v.metrics.auc});
      }
  } else {
    baselines.add("skipped", "no training split found (for liar:PATH.tsv, train.tsv beside it)");
    log_warn("no train.tsv beside " + spec.path + ": baselines skipped");
  }
  // The evaluated set's own majority class (an upper bound on any constant predictor).
  baselines.add("heldout_majority_accuracy", data.majority_accuracy());
  // The model against each baseline on the same examples and resamples.
  std::vector<ViewComparison> comparisons;
  JsonObject bootstrap_json, model_minus_baselines;
  bootstrap_json.add("resamples", bootstrap.resamples);
  if (with_intervals) {
    comparisons = compare_with_baselines(systems, bootstrap);
    bootstrap_json.add("seed", static_cast<int64_t>(bootstrap.seed)).add("level", bootstrap.level)
        .add("method", "percentile intervals over resamples of the examples; paired model-minus-baseline "
                       "differences with centred two-sided p = (1 + #{|d_b - d| >= |d|}) / (B + 1); McNemar exact");
    for (size_t s = 1; s < systems.size(); ++s) {
      JsonObject per_view;
      for (const ViewComparison& c : comparisons)
        if (c.baseline == systems[s].system) per_view.add_raw(c.view, comparison_json(c));
      std::string key = systems[s].system;
      std::replace(key.begin(), key.end(), '-', '_');  // "ngram-lr" is baselines.ngram_lr
      model_minus_baselines.add(key, per_view);
    }
  }

  // report.json
  JsonObject report;
  report.add("checkpoint", fs::absolute(checkpoint).string()).add("step", step).add("data", data_spec)
      .add("dataset", data.name).add("n", n).add("leaking_features", data.leaking)
      .add("fields", spec.kind == EvalSourceKind::kLiar ? cfg.data.fields : std::string("evidence+claim"))
      .add("num_classes", mc.num_classes).add("seq_len", seq_len).add("batch_size", batch_size)
      .add("threads", num_threads()).add("device", device).add("inference_seconds", infer_seconds)
      .add("examples_per_s", static_cast<double>(n) / std::max(1e-9, infer_seconds))
      .add_raw("views", views_object(views)).add_raw("routing", json_array(routing_json))
      .add_raw("attention", json_array(attention_json)).add("baselines", baselines).add("bootstrap", bootstrap_json);
  if (with_intervals) report.add("model_minus_baselines", model_minus_baselines);
  write_file_atomic(out_dir + "/report.json", report.str() + "\n");

  // Plots.
  std::vector<ReliabilityPanel> rel;
  std::vector<ConfusionPanel> conf;
  for (const auto& v : views) {
    if (v.name != "liar6" && v.name != "liar2" && v.name != "synthetic") continue;
    const ReliabilityBins rb = reliability_bins(v.probs, v.labels, v.metrics.num_classes, 15);
    rel.push_back({v.name, rb.count, rb.confidence, rb.accuracy, v.metrics.ece});
    conf.push_back({v.name, v.class_names, v.metrics.confusion});
  }
  write_file_atomic(out_dir + "/reliability.svg", plot_reliability(rel));
  write_file_atomic(out_dir + "/confusion.svg", plot_confusion(conf));
  if (!roc_series.empty()) write_file_atomic(out_dir + "/roc.svg", plot_roc(roc_series, "ROC (" + data.name + ")"));
  write_file_atomic(out_dir + "/expert_load.svg",
                    plot_expert_load(layer_names, load, "tokens per expert, non-PAD (" + data.name + ")"));

  // The readable report.
  std::cout << "\nsmt eval: " << checkpoint << " (step " << step << ") on " << data.name << " (" << n
            << " examples" << (data.leaking ? ", LEAKING features" : "") << ")\n\n"
            << format_views_table(systems);
  if (with_intervals) {
    std::cout << "\n95% intervals (bootstrap, " << bootstrap.resamples << " resamples of the examples, seed "
              << bootstrap.seed << ")\n"
              << format_intervals_table(systems);
    if (!comparisons.empty())
      std::cout << "\nmodel minus baseline (paired bootstrap on the same resamples; p two-sided)\n"
                << format_comparisons_table(comparisons);
  }
  std::cout << "\nrouting (non-PAD tokens; specialisation = I(label; expert)/H(expert))\n"
            << format_routing_table(routing) << "\nattention at seq_len " << seq_len << ":";
  for (int l = 0; l < mc.layers; ++l) {
    const BlockMask& mask = model.block_mask(l, static_cast<int>(seq_len));
    char buf[160];
    std::snprintf(buf, sizeof buf, "  layer %d %s element density %.3f, block density %.3f", l,
                  attn_pattern_name(mask.config.kind).c_str(), mask.element_density(), mask.block_density());
    std::cout << "\n" << buf;
  }
  std::cout << "\n\nreport: " << out_dir << "/report.json (plots: roc.svg, reliability.svg, confusion.svg, "
            << "expert_load.svg)\n";
  return 0;
}

}  // namespace smt
