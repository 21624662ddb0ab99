// `smt train`: load data, build the model, run the optimizer loop, log metrics.jsonl, then
// evaluate on the held-out split and append the {"event":"final"} record.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "app/cli.h"
#include "app/numeric_guard.h"
#include "app/parallel_run.h"
#include "app/signals.h"
#include "app/step_watchdog.h"
#include "app/train_backend.h"
#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"
#include "core/timer.h"
#include "data/batch.h"
#include "data/source.h"
#include "data/tokenizer.h"
#include "eval/evaluator.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/metrics_log.h"
#include "model/model.h"
#include "parallel/parallel_context.h"

namespace smt {

namespace {

void prepare_run_dir(const std::string& dir, const char* what = "run folder") {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  SMT_USAGE_CHECK(!ec && fs::is_directory(dir), "cannot create ", what, " ", dir, ": ",
                  ec ? ec.message() : "a file of that name exists");
  const fs::path probe = fs::path(dir) / ".smt-write-test";
  {
    std::ofstream f(probe);
    SMT_USAGE_CHECK(f.good(), what, " ", dir, " is not writable: ", std::strerror(errno));
  }
  fs::remove(probe, ec);
}

// A fresh run (no --resume) writes metrics.jsonl from scratch and, through checkpoint.keep, prunes the
// checkpoint folder; a later --resume would then pick whichever run's checkpoint has the highest step. So a
// folder holding an earlier run is refused (exit 2, nothing touched) unless --overwrite. Returns what the
// folders hold ("" = no earlier run): a non-empty metrics.jsonl, step-*.h5 files in the checkpoint folder.
std::string earlier_run_in(const RunConfig& cfg) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string metrics = cfg.run_dir + "/metrics.jsonl";
  const bool has_metrics = fs::is_regular_file(metrics, ec) && fs::file_size(metrics, ec) > 0;
  const size_t num_checkpoints = checkpoint_files(cfg.checkpoint_dir()).size();
  std::string held = has_metrics ? metrics : "";
  if (num_checkpoints > 0)
    held += (held.empty() ? "" : " and ") + std::to_string(num_checkpoints) +
            (num_checkpoints == 1 ? " checkpoint in " : " checkpoints in ") + cfg.checkpoint_dir();
  return held;
}

JsonObject eval_json(const EvalSummary& s) {
  JsonObject o;
  o.add("eval_accuracy", s.overall.accuracy)
      .add("majority_accuracy", s.majority_accuracy)
      .add("eval_macro_f1", s.overall.macro_f1)
      .add("eval_nll", s.overall.nll)
      .add("eval_brier", s.overall.brier)
      .add("eval_ece", s.overall.ece)
      .add("eval_n", s.overall.n);
  if (s.overall.auc >= 0) o.add("eval_auc", s.overall.auc);
  if (s.has_binary_view) {
    o.add("eval_binary_accuracy", s.binary.accuracy)
        .add("binary_majority_accuracy", s.binary_majority_accuracy)
        .add("eval_binary_auc", s.binary.auc);
  }
  if (!s.group_names.empty()) {
    JsonObject g;
    for (size_t i = 0; i < s.group_names.size(); ++i)
      if (s.group_count[i] > 0) g.add(s.group_names[i], s.group_accuracy[i]);
    o.add("eval_group_accuracy", g);
  }
  return o;
}

}  // namespace

int cmd_train(int argc, char** argv) {
  RunConfig cfg;
  static const char* const kUsage = "[--config FILE] [--section.key=value ...] [--resume[=FILE] | --overwrite]";
  if (!parse_run_config(argc, argv, "train", kUsage, cfg)) return 0;
  SMT_USAGE_CHECK(!(cfg.checkpoint.overwrite && !cfg.checkpoint.resume.empty()),
                  "--overwrite starts a run over and --resume continues one: give one of them");
  // One process, or one rank of an mpirun/srun job: the ranks split the experts and the global batch.
  std::unique_ptr<Communicator> world = make_world_communicator();
  const bool is_root = world->rank() == 0;
  set_log_rank(world->rank());
  check_same_config_on_all_ranks(*world, cfg.to_ini());
  const ParallelContext par =
      make_parallel_context(std::move(world), cfg.parallel.expert_parallel, cfg.model.experts, cfg.train.batch_size);
  const int cuda_device = cfg.device == "cuda" ? cuda_device_for_rank(par, cfg.parallel.device_comm) : -1;  // refused here, before any write
  // Threads: all cores for one process; under several ranks per node, the node's cores shared.
  int threads = cfg.train.threads;
  if (threads == 0 && par.world->local_size() > 1)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / par.world->local_size());
  set_num_threads(threads);
  DataSplits data = load_data(cfg.data, cfg.seed, make_tokenizer(cfg.data.tokenizer, cfg.model.vocab_size));
  SMT_USAGE_CHECK(!data.train.examples.empty(), "the training set is empty");
  if (cfg.model.num_classes == 0) cfg.model.num_classes = data.train.num_classes();
  SMT_USAGE_CHECK(cfg.model.num_classes == data.train.num_classes() || cfg.model.head == "lm",
                  "model.num_classes = ", cfg.model.num_classes, " but the data has ", data.train.num_classes(),
                  " classes");
  bool resuming = !cfg.checkpoint.resume.empty();
  std::string resume_file;
  if (resuming) {
    if (is_root) {
      resume_file =
          cfg.checkpoint.resume == "latest" ? find_latest_checkpoint(cfg.checkpoint_dir()) : cfg.checkpoint.resume;
      if (resume_file.empty() && cfg.checkpoint.resume == "latest" && stopped_before_first_checkpoint(cfg.checkpoint_dir()))
        log_info("--resume: " + cfg.checkpoint_dir() + " holds no checkpoint yet (the run stopped before its first): "
                 "starting from step 0");
      else
        SMT_USAGE_CHECK(!resume_file.empty(), "--resume: no complete checkpoint in ", cfg.checkpoint_dir());
      SMT_USAGE_CHECK(resume_file.empty() || std::filesystem::is_regular_file(resume_file), "--resume: no checkpoint file ",
                      resume_file);
    }
    resume_file = broadcast_string(*par.world, resume_file);  // every rank loads rank 0's choice
    resuming = !resume_file.empty();
  }

  Model model(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  model.init_params(cfg.seed);
  if (par.distributed()) model.set_parallel(&par);
  if (!cfg.model.init_from.empty() && !resuming) {  // read before anything is written (it may be in a folder below)
    SMT_USAGE_CHECK(std::filesystem::is_regular_file(cfg.model.init_from), "model.init_from: no checkpoint file ",
                    cfg.model.init_from);
    load_parameters_only(cfg.model.init_from, model);
    log_info("parameters initialised from " + cfg.model.init_from);
  }
  // Rank 0 looks at the folders and every rank refuses alike (one message, exit 2, before any work).
  const std::string earlier_run =
      broadcast_string(*par.world, is_root && cfg.checkpoint.resume.empty() ? earlier_run_in(cfg) : "");
  SMT_USAGE_CHECK(earlier_run.empty() || cfg.checkpoint.overwrite, "an earlier run is there (", earlier_run,
                  "): continue it with --resume, start over with --overwrite (deletes every checkpoint in ",
                  cfg.checkpoint_dir(), "), or choose another --run.dir");
  if (is_root) prepare_run_dir(cfg.run_dir);
  if (is_root) prepare_run_dir(cfg.checkpoint_dir(), "checkpoint folder");  // refused before training, not at the first save
  if (is_root && !earlier_run.empty()) {  // --overwrite, the folders writable: the earlier run's checkpoints go
    const int removed = remove_checkpoints(cfg.checkpoint_dir(), cfg.model.init_from);
    log_info("--overwrite: starting over (" + earlier_run + "; " + std::to_string(removed) + " deleted)");
  }
  const std::string metrics_path = cfg.run_dir + "/metrics.jsonl";
  DataLoader loader(data.train, cfg.seed, cfg.train.batch_size, cfg.train.seq_len, cfg.data.pack);
  TrainState state;
  state.data_seed = cfg.seed;
  if (resuming) {
    std::vector<std::string> changed;
    load_checkpoint(resume_file, model, cfg, state, &changed);
    loader.set_cursor(state.cursor);
    log_info("resuming from " + resume_file + " at step " + std::to_string(state.step));
    for (const auto& c : changed) log_info("  setting changed on resume: " + c);
    if (const int64_t cut = is_root ? truncate_metrics_after(metrics_path, state.step) : 0; cut > 0)
      log_info("  metrics.jsonl cut back to step " + std::to_string(state.step) + " (" + std::to_string(cut) +
               " later records dropped)");
    SMT_USAGE_CHECK(state.step <= cfg.train.steps, "checkpoint ", resume_file, " is at step ", state.step,
                    ", train.steps = ", cfg.train.steps, ": nothing left to train");
    if (state.step == cfg.train.steps)  // killed after the last checkpoint, e.g. in the evaluation
      log_info("  training was complete at step " + std::to_string(state.step) + ": evaluating only");
  } else if (is_root) {
    std::ofstream truncate(metrics_path);  // a fresh run starts a fresh metrics file
  }
  if (is_root) std::ofstream(cfg.run_dir + "/config.ini") << cfg.to_ini();
  // The loop trains through the backend; `model` stays the host copy for checkpoints and evaluation.
  const std::unique_ptr<TrainBackend> backend =
      cuda_device >= 0 ? make_cuda_backend(model, cfg, cuda_device, par) : make_cpu_backend(model);
  log_info("smt train: " + std::to_string(model.num_params()) + " parameters, " + data.train.name + " " +
           std::to_string(data.train.examples.size()) + " examples, " + data.heldout.name + " " +
           std::to_string(data.heldout.examples.size()) + " examples, attention " + cfg.model.attention +
           ", " + backend->describe() + ", " + std::to_string(num_threads()) + " host threads" +
           (par.distributed() ? " per rank, " + par.describe() : ""));

  const std::string checkpoint_dir = cfg.checkpoint_dir();
  int64_t saved_step = resuming ? state.step : -1;  // the newest checkpoint this run can resume from
  std::string saved_path = resume_file, last_record;
  auto write_checkpoint = [&](int64_t step, const std::string& last_record) {
    state.step = step;
    state.cursor = loader.cursor();
    state.last_metrics_json = last_record;
    Model& host = backend->synced_host_model();
    gather_experts(host);  // collective: rank 0 writes the whole model in its global shapes
    if (!is_root) return;
    save_checkpoint(checkpoint_dir + "/" + checkpoint_file_name(step), host, cfg, state);
    prune_checkpoints(checkpoint_dir, cfg.checkpoint.keep);
    saved_step = step;
    saved_path = checkpoint_dir + "/" + checkpoint_file_name(step);
  };
  // SIGTERM / SIGINT: checkpoint the last completed step and exit 128 + signal (app/signals.h).
  install_stop_signal_handlers();
  auto stop_for_signal = [&](int sig, int64_t done) {
    if (done > 0 && saved_step != done) write_checkpoint(done, last_record);  // collective: every rank agreed
    log_info(std::string(signal_name(sig)) + ": stopped after step " + std::to_string(done) + "; checkpoint: " +
             (saved_path.empty() ? "none (no step completed)" : saved_path + " (continue with --resume)"));
    return 128 + sig;
  };
  NumericGuard numeric_guard(cfg.train.max_bad_steps, checkpoint_dir, is_root ? metrics_path : "");
  Progress progress(is_root ? cfg.train.steps : 0);
  Timer total_timer;
  double window_tokens = 0, window_seconds = 0;
  double peak_device_bytes = -1;  // the largest device memory in use after a step (cuda only)
  const int64_t tokens_per_step = cfg.train.batch_size * cfg.train.seq_len;
  const int64_t first_step = state.step + 1;
  // Ends the run if a step (with its checkpoint) does not finish within train.step_timeout seconds.
  StepWatchdog watchdog(cfg.train.step_timeout, par.distributed() ? "smt train: error on rank " +
                                                                        std::to_string(par.world_rank())
                                                                  : std::string("smt train: error"));
  for (int64_t step = state.step + 1; step <= cfg.train.steps; ++step) {
    watchdog.beat(step);
    if (const int sig = stop_signal_all_ranks(par.world.get())) return stop_for_signal(sig, step - 1);
    Timer step_timer;
    inject_test_fault(par.world_rank(), step);
    const Batch global_batch = loader.next();  // every rank draws the global batch, trains on its rows
    const auto [first_row, last_row] = par.batch_shard(global_batch.batch_size);
    const Batch batch = par.distributed() ? slice_rows(global_batch, first_row, last_row) : global_batch;
    backend->zero_grads();
    LossParts loss = backend->forward(batch);
    loss.total = numeric_guard.hook_loss(step, loss.total);
    double grad_norm = std::numeric_limits<double>::quiet_NaN();
    if (std::isfinite(loss.total)) {  // the loss is global: every rank takes the same branch
      backend->backward();
      if (const int64_t off = numeric_guard.injection_offset(step, model.layout()); off >= 0)
        backend->poison_gradient(off);
      grad_norm = backend->gradient_norm();  // collective under several ranks
    }
    const auto name_bad_gradient = [&] {
      const std::string bad = backend->first_non_finite_gradient();
      return bad.empty() ? std::string("a tensor held by another rank") : bad;  // expert slices held elsewhere
    };
    if (numeric_guard.skip_step(step, loss.total, grad_norm, name_bad_gradient)) continue;  // no update, no checkpoint
    backend->apply_update(cfg.train, step, grad_norm);
    const double dt = step_timer.seconds();
    peak_device_bytes = std::max(peak_device_bytes, backend->device_memory_used_bytes());
    state.tokens_seen += tokens_per_step;
    window_tokens += static_cast<double>(tokens_per_step);
    window_seconds += dt;
    const double tokens_per_s = window_seconds > 0 ? window_tokens / window_seconds : 0;
    const bool log_now = step % cfg.train.log_every == 0 || step == cfg.train.steps || step == 1;
    if (log_now) {
      JsonObject rec;
      rec.add("event", "step").add("step", step).add("tokens_seen", state.tokens_seen).add("loss", loss.total).add("task_loss", loss.task)
          .add("aux_loss", loss.aux).add("z_loss", loss.z).add("lr", static_cast<double>(learning_rate_at(cfg.train, step)))
          .add("grad_norm", grad_norm).add("tokens_per_s", tokens_per_s).add("step_s", dt);
      std::vector<std::string> per_layer;
      for (const auto& r : backend->routing()) {
        if (!r.is_moe) continue;
        JsonObject lr;
        lr.add("tokens_per_expert", r.tokens_per_expert).add("dropped", r.dropped);
        per_layer.push_back(lr.str());
      }
      rec.add_raw("moe_layers", json_array(per_layer));
      if (par.distributed()) rec.add("parallel", parallel_step_record(par, backend->exchange_stats(), dt));
      if (is_root) append_jsonl(metrics_path, rec);
      last_record = rec.str();
      window_tokens = window_seconds = 0;
    }
    if ((cfg.checkpoint.every > 0 && step % cfg.checkpoint.every == 0) || step == cfg.train.steps)
      write_checkpoint(step, last_record);
    const double elapsed = total_timer.seconds();
    const double eta = elapsed / (step - first_step + 1) * (cfg.train.steps - step);
    char info[200];
    std::snprintf(info, sizeof info, "step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs", static_cast<long long>(step),
                  static_cast<long long>(cfg.train.steps), loss.total, tokens_per_s, eta);
    if (is_root) progress.update(step, info, log_now);
  }
  if (is_root) progress.finish();
  watchdog.stop();  // the evaluation below is not a training step
  if (const int sig = stop_signal_all_ranks(par.world.get())) return stop_for_signal(sig, cfg.train.steps);
  const double train_seconds = total_timer.seconds();

  EvalSummary summary;
  if (cfg.model.head == "classifier") {
    // On the training device; every rank holds the full model and evaluates a share of the set.
    const Predictions pred =
        backend->evaluate(data.heldout, cfg.train.seq_len, cfg.train.eval_batch_size, *par.world);
    summary = summarize(pred, data.heldout);
    log_info(format_summary(summary, "held-out evaluation (" + data.heldout.name + ")"));
  }
  JsonObject rec;
  rec.add("event", "final").add("steps", cfg.train.steps).add("tokens_seen", state.tokens_seen)
      .add("train_seconds", train_seconds)
      .add("tokens_per_s", (cfg.train.steps - first_step + 1) * static_cast<double>(tokens_per_step) / train_seconds);
  if (cfg.model.head == "classifier") rec.merge(eval_json(summary));
  if (par.distributed()) rec.add("world_size", par.world_size()).add("expert_parallel", par.expert_parallel);
  if (peak_device_bytes >= 0) rec.add("device", backend->describe()).add("device_memory_peak_GiB", peak_device_bytes / (1u << 30));
  if (const PhaseTotals* phases = backend->phase_totals(); phases != nullptr && phases->steps() > 0) {
    rec.add_raw("phase_ms_per_step", phases->json());
    if (is_root) log_info("GPU time per step by phase (train.profile, rank 0):\n" + phases->table());
  }
  if (is_root) append_jsonl(metrics_path, rec);
  log_info("run folder: " + cfg.run_dir);
  return 0;
}

}  // namespace smt
