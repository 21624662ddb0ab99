// Config keys (Boost.Program_options), INI round trip and validation.
#include "model/config.h"

#include <boost/program_options.hpp>
#include <cctype>
#include <cmath>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "data/tokenizer.h"
#include "model/memory_estimate.h"

namespace po = boost::program_options;

namespace smt {

AttnPatternConfig ModelConfig::attention_pattern(uint64_t seed) const {
  AttnPatternConfig pc;
  pc.kind = parse_attn_pattern(attention);
  pc.causal = causal;
  pc.block_size = block_size;
  pc.window = window;
  pc.num_random_blocks = random_blocks;
  pc.stride_blocks = stride_blocks;
  pc.num_global_blocks = global_blocks;
  pc.seed = seed;
  return pc;
}

AttnPatternConfig RunConfig::attention_pattern() const { return model.attention_pattern(seed); }

po::options_description run_config_options(RunConfig& c) {
  po::options_description all(
      "Configuration (INI sections [model] [train] [data] [checkpoint] [parallel] [run], and top-level keys before "
      "any section; command line --section.key=value or --key=value wins)");
  po::options_description m("model");
  auto& M = c.model;
  m.add_options()
      ("model.d_model", po::value(&M.d_model)->default_value(M.d_model), "model width d")
      ("model.layers", po::value(&M.layers)->default_value(M.layers), "transformer blocks")
      ("model.heads", po::value(&M.heads)->default_value(M.heads), "attention heads (must divide d_model)")
      ("model.experts", po::value(&M.experts)->default_value(M.experts), "experts per MoE layer")
      ("model.top_k", po::value(&M.top_k)->default_value(M.top_k), "experts per token")
      ("model.expert_hidden", po::value(&M.expert_hidden)->default_value(M.expert_hidden), "expert hidden width f")
      ("model.vocab_size", po::value(&M.vocab_size)->default_value(M.vocab_size),
       "token ids [0, V): 260 with data.tokenizer = bytes; words: 260 byte/special ids + hash buckets (>= 1024)")
      ("model.capacity_factor", po::value(&M.capacity_factor)->default_value(M.capacity_factor),
       "expert capacity factor c (0 = dropless; else ceil(c*T*k/E) per expert)")
      ("model.moe_every", po::value(&M.moe_every)->default_value(M.moe_every),
       "MoE in every n-th block, dense FFN elsewhere (1 = all blocks)")
      ("model.head", po::value(&M.head)->default_value(M.head), "classifier | lm")
      ("model.num_classes", po::value(&M.num_classes)->default_value(M.num_classes), "classes (0 = from the data)")
      ("model.rope_theta", po::value(&M.rope_theta)->default_value(M.rope_theta), "rotary embedding base")
      ("model.norm_eps", po::value(&M.norm_eps)->default_value(M.norm_eps), "RMSNorm epsilon")
      ("model.attention", po::value(&M.attention)->default_value(M.attention),
       "attention pattern: dense | local | random | block_sparse | bigbird")
      ("model.causal", po::value(&M.causal)->default_value(M.causal), "causal attention (true/false)")
      ("model.block_size", po::value(&M.block_size)->default_value(M.block_size), "attention block size b (tokens)")
      ("model.window", po::value(&M.window)->default_value(M.window), "local/bigbird window w (tokens)")
      ("model.random_blocks", po::value(&M.random_blocks)->default_value(M.random_blocks),
       "random/bigbird: random key blocks per query block")
      ("model.stride_blocks", po::value(&M.stride_blocks)->default_value(M.stride_blocks),
       "block_sparse: stride group size s (blocks)")
      ("model.global_blocks", po::value(&M.global_blocks)->default_value(M.global_blocks),
       "bigbird: global blocks g")
      ("model.init_from", po::value(&M.init_from)->default_value(M.init_from),
       "checkpoint whose parameters initialise the model (e.g. after LM pretraining); optimizer starts fresh");
  po::options_description t("train");
  auto& T = c.train;
  t.add_options()
      ("train.steps", po::value(&T.steps)->default_value(T.steps), "optimizer steps")
      ("train.batch_size", po::value(&T.batch_size)->default_value(T.batch_size), "sequences per step (global)")
      ("train.seq_len", po::value(&T.seq_len)->default_value(T.seq_len), "tokens per sequence N")
      ("train.lr", po::value(&T.lr)->default_value(T.lr), "peak learning rate")
      ("train.min_lr_ratio", po::value(&T.min_lr_ratio)->default_value(T.min_lr_ratio), "final lr / peak lr (cosine)")
      ("train.warmup", po::value(&T.warmup)->default_value(T.warmup), "linear warm-up steps")
      ("train.weight_decay", po::value(&T.weight_decay)->default_value(T.weight_decay), "AdamW decay (matrices only)")
      ("train.clip", po::value(&T.clip)->default_value(T.clip), "global gradient-norm clip (0 = off)")
      ("train.beta1", po::value(&T.beta1)->default_value(T.beta1), "AdamW beta1")
      ("train.beta2", po::value(&T.beta2)->default_value(T.beta2), "AdamW beta2")
      ("train.aux_loss_coeff", po::value(&T.aux_loss_coeff)->default_value(T.aux_loss_coeff),
       "load-balance loss coefficient")
      ("train.z_loss_coeff", po::value(&T.z_loss_coeff)->default_value(T.z_loss_coeff), "router z-loss coefficient")
      ("train.log_every", po::value(&T.log_every)->default_value(T.log_every), "metrics record every n steps")
      ("train.eval_batch_size", po::value(&T.eval_batch_size)->default_value(T.eval_batch_size),
       "sequences per evaluation batch")
      ("train.threads", po::value(&T.threads)->default_value(T.threads), "CPU threads (0 = all cores)")
      ("train.step_timeout", po::value(&T.step_timeout)->default_value(T.step_timeout),
       "seconds without a finished step before the run is ended as hung (exit 1; 0 = no watchdog)")
      ("train.profile", po::value(&T.profile)->default_value(T.profile),
       "device = cuda: GPU time per phase of the step (CUDA events), reported at the end; the first step is not timed")
      ("train.max_bad_steps", po::value(&T.max_bad_steps)->default_value(T.max_bad_steps),
       "a step with a non-finite loss or gradient is skipped; stop after this many in a row");
  po::options_description dd("data");
  auto& D = c.data;
  dd.add_options()
      ("data.source", po::value(&D.source)->default_value(D.source), "synthetic | liar")
      ("data.path", po::value(&D.path)->default_value(D.path), "liar: folder holding train.tsv and valid.tsv")
      ("data.fields", po::value(&D.fields)->default_value(D.fields),
       "liar inputs: statement | statement+metadata | statement+metadata+credit (credit leaks the label)")
      ("data.binary", po::value(&D.binary)->default_value(D.binary), "liar: true/false instead of six labels")
      ("data.pack", po::value(&D.pack)->default_value(D.pack),
       "model.head = lm: fill each training row with consecutive examples (cut at seq_len) instead of one padded example")
      ("data.tokenizer", po::value(&D.tokenizer)->default_value(D.tokenizer),
       "bytes | words (lower-cased words and punctuation, words hashed into model.vocab_size ids)")
      ("data.synthetic_train", po::value(&D.synthetic_train)->default_value(D.synthetic_train),
       "synthetic: training items")
      ("data.synthetic_heldout", po::value(&D.synthetic_heldout)->default_value(D.synthetic_heldout),
       "synthetic: held-out items")
      ("data.long_context_fraction", po::value(&D.long_context_fraction)->default_value(D.long_context_fraction),
       "synthetic: fraction of long-context items")
      ("data.long_context_chars", po::value(&D.long_context_chars)->default_value(D.long_context_chars),
       "synthetic: bytes between evidence and claim in long-context items");
  po::options_description ck("checkpoint (resume and overwrite: flags of one invocation, not stored in config.ini)");
  auto& K = c.checkpoint;
  ck.add_options()
      ("checkpoint.every", po::value(&K.every)->default_value(K.every), "checkpoint every n steps (0 = only at the end)")
      ("checkpoint.dir", po::value(&K.dir)->default_value(K.dir), "checkpoint folder (empty = <run.dir>/checkpoints)")
      ("checkpoint.keep", po::value(&K.keep)->default_value(K.keep), "newest checkpoints to keep")
      ("resume", po::value(&K.resume)->default_value(K.resume)->implicit_value("latest"),
       "continue from a checkpoint: --resume (newest complete one in checkpoint.dir) or --resume=FILE")
      ("overwrite", po::value(&K.overwrite)->default_value(K.overwrite)->implicit_value(true),
       "start a fresh run in a run.dir / checkpoint.dir holding an earlier run (every checkpoint in checkpoint.dir "
       "but model.init_from is deleted, metrics.jsonl replaced); without it such a run is refused");
  po::options_description pp("parallel");
  pp.add_options()
      ("parallel.expert_parallel", po::value(&c.parallel.expert_parallel)->default_value(c.parallel.expert_parallel),
       "expert-parallel group size P under mpirun/srun (0 = min(ranks, experts)); P divides ranks and experts")
      ("parallel.device_comm", po::value(&c.parallel.device_comm)->default_value(c.parallel.device_comm),
       "device = cuda under several ranks: auto (NCCL when each rank has its own GPU, else MPI) | nccl | mpi");
  po::options_description r("run (run.dir; seed, device, precision and flash_dq are top-level keys)");
  r.add_options()
      ("run.dir", po::value(&c.run_dir)->default_value(c.run_dir), "output folder (config, metrics.jsonl)")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of initialisation, data order and random attention")
      ("device", po::value(&c.device)->default_value(c.device), "cpu | cuda")
      ("precision", po::value(&c.precision)->default_value(c.precision),
       "GEMM operands: auto (fp32 on cpu, bf16 on cuda) | fp32 | bf16 (cuda only; fp32 accumulation and master weights)")
      ("flash_dq", po::value(&c.flash_dq)->default_value(c.flash_dq),
       "bf16 flash attention backward's dq on cuda: deterministic (second pass, same bits every run) | atomic "
       "(fp32 atomics in the dk/dv pass)");
  all.add(m).add(t).add(dd).add(ck).add(pp).add(r);
  return all;
}

void RunConfig::validate() const {
  const auto& M = model;
  const auto& T = train;
  SMT_USAGE_CHECK(M.d_model > 0 && M.layers > 0 && M.heads > 0, "model.d_model, model.layers and model.heads must be positive");
  SMT_USAGE_CHECK(M.d_model % M.heads == 0, "model.heads (", M.heads, ") does not divide model.d_model (", M.d_model, ")");
  SMT_USAGE_CHECK(M.head_dim() % 2 == 0, "head dim d_model/heads = ", M.head_dim(), " must be even for rotary embeddings");
  SMT_USAGE_CHECK(M.experts > 0, "model.experts must be positive, got ", M.experts);
  SMT_USAGE_CHECK(M.top_k > 0 && M.top_k <= M.experts, "model.top_k (", M.top_k, ") must be in [1, model.experts = ",
                  M.experts, "]");
  SMT_USAGE_CHECK(M.expert_hidden > 0, "model.expert_hidden must be positive");
  SMT_USAGE_CHECK(M.capacity_factor >= 0 && std::isfinite(M.capacity_factor), "model.capacity_factor must be >= 0");
  SMT_USAGE_CHECK(M.moe_every >= 1, "model.moe_every must be >= 1");
  SMT_USAGE_CHECK(M.head == "classifier" || M.head == "lm", "model.head must be classifier or lm, got '", M.head, "'");
  SMT_USAGE_CHECK(M.num_classes >= 0, "model.num_classes must be >= 0");
  parse_attn_pattern(M.attention);
  SMT_USAGE_CHECK(M.block_size > 0, "model.block_size must be positive");
  SMT_USAGE_CHECK(M.window >= 0, "model.window must be >= 0");
  SMT_USAGE_CHECK(M.random_blocks >= 0 && M.stride_blocks > 0 && M.global_blocks >= 0,
                  "model.random_blocks, model.global_blocks must be >= 0 and model.stride_blocks > 0");
  SMT_USAGE_CHECK(T.steps > 0 && T.batch_size > 0 && T.seq_len > 1, "train.steps, train.batch_size must be positive and train.seq_len > 1");
  if (M.attention == "local" || M.attention == "bigbird")
    SMT_USAGE_CHECK(M.window < T.seq_len, "model.window (", M.window, ") is not smaller than train.seq_len (", T.seq_len,
                    ")");
  SMT_USAGE_CHECK(T.lr > 0 && T.warmup >= 0 && T.clip >= 0 && T.weight_decay >= 0, "train.lr must be > 0 and train.warmup, train.clip, train.weight_decay >= 0");
  SMT_USAGE_CHECK(T.beta1 >= 0 && T.beta1 < 1 && T.beta2 >= 0 && T.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)");
  SMT_USAGE_CHECK(T.step_timeout == 0 || (T.step_timeout >= 1 && T.step_timeout <= 1e7),
                  "train.step_timeout must be 0 (no watchdog) or between 1 and 1e7 seconds, got ", T.step_timeout);
  SMT_USAGE_CHECK(T.max_bad_steps >= 1, "train.max_bad_steps must be >= 1, got ", T.max_bad_steps);
  SMT_USAGE_CHECK(T.log_every > 0 && T.eval_batch_size > 0, "train.log_every and train.eval_batch_size must be positive");
  SMT_USAGE_CHECK(data.source == "synthetic" || data.source == "liar", "data.source must be synthetic or liar, got '",
                  data.source, "'");
  SMT_USAGE_CHECK(data.source != "liar" || !data.path.empty(), "data.path must name the LIAR folder when data.source = liar");
  SMT_USAGE_CHECK(!data.pack || M.head == "lm", "data.pack = true needs model.head = lm (a classifier row is one example)");
  make_tokenizer(data.tokenizer, M.vocab_size);  // throws UsageError where the two do not fit
  SMT_USAGE_CHECK(checkpoint.every >= 0 && checkpoint.keep >= 1, "checkpoint.every must be >= 0 and checkpoint.keep >= 1");
  SMT_USAGE_CHECK(T.threads >= 0, "train.threads must be >= 0 (0 = all cores), got ", T.threads);
  SMT_USAGE_CHECK(data.synthetic_train > 0 && data.synthetic_heldout > 0,
                  "data.synthetic_train and data.synthetic_heldout must be positive");
  SMT_USAGE_CHECK(data.long_context_fraction >= 0 && data.long_context_fraction <= 1,
                  "data.long_context_fraction must be in [0, 1], got ", data.long_context_fraction);
  SMT_USAGE_CHECK(data.long_context_chars >= 0, "data.long_context_chars must be >= 0");
  SMT_USAGE_CHECK(parallel.expert_parallel >= 0, "parallel.expert_parallel must be >= 0 (0 = automatic)");
  SMT_USAGE_CHECK(parallel.device_comm == "auto" || parallel.device_comm == "nccl" || parallel.device_comm == "mpi",
                  "parallel.device_comm must be auto, nccl or mpi, got '", parallel.device_comm, "'");
  SMT_USAGE_CHECK(device == "cpu" || device == "cuda", "device must be cpu or cuda, got '", device, "'");
  SMT_USAGE_CHECK(!train.profile || device == "cuda",
                  "train.profile times the phases of a GPU step: it needs device = cuda");
  SMT_USAGE_CHECK(precision == "auto" || precision == "fp32" || precision == "bf16",
                  "precision must be auto, fp32 or bf16, got '", precision, "'");
  SMT_USAGE_CHECK(precision != "bf16" || device == "cuda",
                  "precision = bf16 needs device = cuda (the CPU path computes in fp32)");
  SMT_USAGE_CHECK(flash_dq == "deterministic" || flash_dq == "atomic",
                  "flash_dq must be deterministic or atomic, got '", flash_dq, "'");
#ifndef SMT_CUDA
  SMT_USAGE_CHECK(device == "cpu", "device = cuda, but this smt was built without CUDA (use the cuda preset)");
#endif
  // String values must survive config.ini (and the copy in every checkpoint): the INI reader cuts a
  // line at '#', trims blanks and cannot continue a value on the next line (found by fuzzing).
  const std::pair<const char*, const std::string*> strings[] = {
      {"model.head", &M.head}, {"model.attention", &M.attention}, {"model.init_from", &M.init_from},
      {"data.source", &data.source}, {"data.path", &data.path}, {"data.fields", &data.fields},
      {"checkpoint.dir", &checkpoint.dir}, {"run.dir", &run_dir}, {"device", &device},
      {"precision", &precision}, {"flash_dq", &flash_dq}, {"parallel.device_comm", &parallel.device_comm}};
  for (const auto& [key, value] : strings) {
    const std::string& v = *value;
    SMT_USAGE_CHECK(v.find_first_of("#\n\r") == std::string::npos &&
                        (v.empty() || (v.front() != ' ' && v.front() != '\t' && v.back() != ' ' && v.back() != '\t')),
                    key, " = '", v, "': '#', line breaks and leading or trailing blanks cannot be stored in config.ini");
  }
  check_memory_fits(*this);  // absurd sizes (seq_len 1e9, 1e6 experts, ...) stop here, with the estimate
}

std::string RunConfig::to_ini() const {
  // Write every option with its current value, section by section.
  RunConfig copy = *this;
  po::options_description desc = run_config_options(copy);
  std::ostringstream top, os;
  std::string section;
  for (const auto& opt : desc.options()) {
    const std::string& key = opt->long_name();
    if (is_invocation_flag(key)) continue;
    boost::any value;
    opt->semantic()->apply_default(value);
    std::string text;
    if (auto* i = boost::any_cast<int>(&value)) text = std::to_string(*i);
    else if (auto* l = boost::any_cast<int64_t>(&value)) text = std::to_string(*l);
    else if (auto* u = boost::any_cast<uint64_t>(&value)) text = std::to_string(*u);
    else if (auto* dv = boost::any_cast<double>(&value)) { std::ostringstream s; s.precision(17); s << *dv; text = s.str(); }
    else if (auto* fv = boost::any_cast<float>(&value)) { std::ostringstream s; s.precision(9); s << *fv; text = s.str(); }
    else if (auto* b = boost::any_cast<bool>(&value)) text = *b ? "true" : "false";
    else if (auto* str = boost::any_cast<std::string>(&value)) text = *str;
    const auto dot = key.find('.');
    if (dot == std::string::npos) {
      top << key << " = " << text << "\n";
      continue;
    }
    const std::string sec = key.substr(0, dot);
    if (sec != section) {
      os << "\n[" << sec << "]\n";
      section = sec;
    }
    os << key.substr(dot + 1) << " = " << text << "\n";
  }
  return top.str() + os.str();
}

void refuse_boost_placeholders(const std::string& text, const std::string& where) {
  // Any %name% (letters, digits, '_'): Boost substitutes %option%, %value%, %canonical_option%,
  // %prefix%, %original_token%, %invalid_line%, ... and loops forever when a value contains its own.
  for (size_t open = text.find('%'); open != std::string::npos; open = text.find('%', open + 1)) {
    size_t end = open + 1;
    while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
    SMT_USAGE_CHECK(end == open + 1 || end >= text.size() || text[end] != '%', where, " contains '",
                    text.substr(open, end + 1 - open),
                    "', which smt cannot accept (its option parser would hang formatting an error message)");
  }
}

RunConfig load_run_config_text(const std::string& ini_text, bool validate) {
  refuse_boost_placeholders(ini_text, "config");
  RunConfig c;
  po::options_description desc = run_config_options(c);
  po::variables_map vm;
  std::istringstream is(ini_text);
  try {
    po::store(po::parse_config_file(is, desc, false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string("config: ") + e.what());
  }
  if (validate) c.validate();
  return c;
}

}  // namespace smt
