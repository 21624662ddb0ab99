// The resolved run configuration: every key of the INI file / command line, grouped by section.
// Defaults here are the documented defaults (`smt train --help` prints them).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/attention_pattern.h"

namespace boost::program_options {
class options_description;
}

namespace smt {

struct ModelConfig {
  int d_model = 128;
  int layers = 2;
  int heads = 2;
  int experts = 8;
  int top_k = 2;
  int expert_hidden = 256;
  int vocab_size = 260;          // token ids [0, V): 260 for data.tokenizer = bytes, hash buckets + 260 for words
  double capacity_factor = 0.0;  // 0 = dropless
  int moe_every = 1;             // MoE in layers with l % moe_every == moe_every-1, dense FFN elsewhere
  std::string head = "classifier";  // classifier | lm
  int num_classes = 0;           // 0 = from the data set
  float rope_theta = 10000.0f;
  float norm_eps = 1e-6f;
  // attention
  std::string attention = "local";  // dense | local | random | block_sparse | bigbird
  bool causal = false;
  int block_size = 64;
  int window = 128;
  int random_blocks = 2;
  int stride_blocks = 4;
  int global_blocks = 1;
  // Initialise the parameters from this checkpoint's (e.g. an LM-pretrained model's) instead of
  // at random; the optimizer state and step start fresh. Shapes must match.
  std::string init_from;

  int head_dim() const { return d_model / heads; }
  // The attention pattern of these settings; `seed` draws the random blocks.
  AttnPatternConfig attention_pattern(uint64_t seed) const;
};

struct TrainConfig {
  int64_t steps = 300;
  int64_t batch_size = 16;
  int64_t seq_len = 256;
  float lr = 1e-3f;
  float min_lr_ratio = 0.1f;
  int64_t warmup = 20;
  float weight_decay = 0.1f;
  float clip = 1.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float aux_loss_coeff = 1e-2f;
  float z_loss_coeff = 1e-3f;
  int64_t log_every = 10;
  int64_t eval_batch_size = 64;
  int threads = 0;  // 0 = all cores
  int64_t max_bad_steps = 10;  // stop after this many non-finite (skipped) steps in a row
  // Seconds a training step (with the checkpoint written after it) may take before the run is ended
  // as hung (exit 1; a rank stuck in a collective would otherwise wait forever). 0 = no watchdog.
  double step_timeout = 1800;
  // device = cuda: time the phases of each step on the GPU (CUDA events) and report the mean per
  // phase in the final metrics record ("phase_ms_per_step") and the log; the first step is not timed.
  bool profile = false;
};

struct DataConfig {
  std::string source = "synthetic";  // synthetic | liar
  std::string path;                  // liar: folder with train.tsv and valid.tsv
  std::string fields = "statement";  // liar: statement | statement+metadata | statement+metadata+credit
  bool binary = false;               // liar: two classes instead of six
  bool pack = false;                 // model.head = lm: rows of concatenated examples, no padding
  std::string tokenizer = "bytes";   // bytes | words (hashed words into model.vocab_size ids)
  int64_t synthetic_train = 4096;
  int64_t synthetic_heldout = 1024;
  double long_context_fraction = 0.1;
  int64_t long_context_chars = 2048;
};

struct CheckpointConfig {
  int64_t every = 0;        // write a checkpoint every n steps (0 = only at the end)
  std::string dir;          // default: <run.dir>/checkpoints
  int keep = 3;             // newest checkpoints kept (older ones deleted after a successful write)
  std::string resume;       // "" = fresh run, "latest" = newest complete checkpoint in dir, else a file
  // A fresh run into a run folder (or checkpoint folder) that holds an earlier run's metrics or checkpoints is
  // refused unless this is set; then that run's checkpoints are deleted and its metrics replaced. Per
  // invocation, like resume: not written to config.ini or checkpoints.
  bool overwrite = false;
};

struct ParallelConfig {
  // Expert-parallel group size P (each rank holds experts / P experts); 0 = min(world size, experts).
  // P must divide both the world size and model.experts.
  int expert_parallel = 0;
  // device = cuda under several ranks: the communicator of MoE rows and gradients. auto = NCCL when
  // every rank has a GPU of its own, else MPI staged through pinned host memory (ranks sharing a GPU).
  std::string device_comm = "auto";  // auto | nccl | mpi
};

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  ParallelConfig parallel;
  std::string run_dir = "runs/default";
  uint64_t seed = 1234;
  std::string device = "cpu";  // cpu | cuda
  // GEMM operand precision: auto | fp32 | bf16. auto = fp32 on the CPU, bf16 on the GPU (bf16 operands,
  // fp32 accumulation, fp32 master weights and optimizer state). bf16 needs device = cuda.
  std::string precision = "auto";
  std::string resolved_precision() const { return precision != "auto" ? precision : device == "cuda" ? "bf16" : "fp32"; }
  // The bf16 flash attention backward's dq (device = cuda): deterministic (a second pass over the key blocks;
  // dq has the same bits every run) | atomic (fp32 atomics inside the dk/dv pass; summation order not fixed).
  // Either way the embedding gradient is summed with atomics on the GPU.
  std::string flash_dq = "deterministic";

  AttnPatternConfig attention_pattern() const;
  std::string checkpoint_dir() const { return checkpoint.dir.empty() ? run_dir + "/checkpoints" : checkpoint.dir; }
  // Whether KEY is one of the options that belong to one invocation (resume, overwrite): not part of the
  // configuration, so not written by to_ini() and refused in a config file.
  static bool is_invocation_flag(const std::string& key) { return key == "resume" || key == "overwrite"; }
  // Throws UsageError naming the first inconsistency (heads not dividing d, window > seq_len, ...).
  void validate() const;
  // The resolved configuration as an INI text that load_run_config_text() reads back.
  std::string to_ini() const;
};

// Every config key as a Boost.Program_options description bound to the fields of `config`
// (whose current values become the printed defaults). Sections: model, train, data, checkpoint, parallel, run.
boost::program_options::options_description run_config_options(RunConfig& config);

// UsageError if `text` (a command-line argument or config file text, named by `where`) contains a
// %name% sequence, the form of Boost.Program_options' message placeholders (%option%, %value%,
// %invalid_line%, ...): Boost's error message formatting loops forever on them (found by fuzzing).
void refuse_boost_placeholders(const std::string& text, const std::string& where);

// Parse an INI text (unknown keys, wrong types -> UsageError) on top of defaults; validate().
RunConfig load_run_config_text(const std::string& ini_text, bool validate = true);

}  // namespace smt
