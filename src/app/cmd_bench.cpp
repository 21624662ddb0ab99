// `smt bench step`: time full training steps (forward, backward, AdamW) of a config on the CPU
// and print one JSON line; bench/run_c1.sh runs it beside the PyTorch twin.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "app/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "data/batch.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "io/json.h"
#include "model/model.h"

namespace po = boost::program_options;

namespace smt {

int cmd_bench(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "compare") == 0) return cmd_bench_compare(argc - 1, argv + 1);
  if (argc >= 2 && std::strcmp(argv[1], "exchange") == 0) return cmd_bench_exchange(argc - 1, argv + 1);
  if (argc >= 2 && std::strcmp(argv[1], "attention") == 0) return cmd_bench_attention(argc - 1, argv + 1);
  if (argc >= 2 && std::strcmp(argv[1], "moe") == 0) return cmd_bench_moe(argc - 1, argv + 1);
  static const char* const kUsage =
      "usage: smt bench step --config FILE [--warmup N] [--repeat N] [--section.key=value ...]\n"
      "       smt bench compare --config FILE [--steps N]\n"
      "       smt bench exchange [--tokens N] [--d_model D] ...   (under mpirun)\n"
      "       smt bench attention [--device cpu|cuda] [--seq N,...] [--head-dim 64,128] ...\n"
      "       smt bench moe [--device cpu|cuda] [--tokens N] [--d D --f F] [--precision fp32|bf16] ...\n"
      "(smt bench SUBCOMMAND --help lists every option)";
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf("%s\n", kUsage);
    return 0;
  }
  SMT_USAGE_CHECK(argc >= 2 && std::strcmp(argv[1], "step") == 0, kUsage);
  int warmup = 2, repeat = 5;
  po::options_description extra("Benchmark");
  extra.add_options()("warmup", po::value(&warmup)->default_value(warmup), "untimed steps first")(
      "repeat", po::value(&repeat)->default_value(repeat), "timed steps (median reported)");
  RunConfig cfg;
  if (!parse_run_config(argc - 1, argv + 1, "bench step", "--config FILE [options]", cfg, &extra)) return 0;
  SMT_USAGE_CHECK(warmup >= 0 && repeat > 0, "--warmup must be >= 0 and --repeat > 0");
  set_num_threads(cfg.train.threads);
  if (cfg.model.num_classes == 0) cfg.model.num_classes = 2;
  Model model(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  model.init_params(cfg.seed);
  // Random byte tokens: the step costs the same whatever the text.
  Batch batch;
  batch.batch_size = cfg.train.batch_size;
  batch.seq_len = cfg.train.seq_len;
  const int64_t T = batch.batch_size * batch.seq_len;
  Rng rng(cfg.seed, 99);
  batch.tokens.resize(T);
  for (auto& t : batch.tokens) t = static_cast<int32_t>(rng.below(256));
  batch.valid.assign(T, 1);
  batch.labels.resize(batch.batch_size);
  for (auto& l : batch.labels) l = static_cast<int32_t>(rng.below(cfg.model.num_classes));
  batch.groups.assign(batch.batch_size, 0);
  batch.lm_targets.resize(T);
  for (int64_t i = 0; i < T; ++i) batch.lm_targets[i] = (i + 1) % batch.seq_len == 0 ? -1 : batch.tokens[i + 1];
  std::vector<double> times;
  for (int s = 1; s <= warmup + repeat; ++s) {
    Timer t;
    model.zero_grads();
    model.forward(batch);
    model.backward();
    optimizer_step(model, cfg.train, s);
    if (s > warmup) times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  JsonObject o;
  o.add("impl", "smt").add("threads", static_cast<int64_t>(num_threads())).add("params", model.num_params())
      .add("tokens_per_step", T).add("step_s", median).add("tokens_per_s", T / median)
      .add("min_step_s", times.front());
  std::cout << o.str() << std::endl;
  return 0;
}

}  // namespace smt
