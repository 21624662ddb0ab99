// Reliability helpers: metrics.jsonl cut back on resume, non-finite tensor detection, and the
// memory estimate / limits that refuse absurd configurations before any allocation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "io/metrics_log.h"
#include "model/config.h"
#include "model/finite_check.h"
#include "model/memory_estimate.h"
#include "model/param_layout.h"

namespace smt {
namespace {

namespace fs = std::filesystem;

std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))).string();
}

TEST(MetricsLog, CutsRecordsAfterTheCheckpointStepAndPartialLines) {
  const std::string p = temp_path("metrics.jsonl");
  std::ofstream(p) << "{\"event\":\"step\",\"step\":1,\"loss\":2.5,\"step_s\":0.1}\n"
                   << "{\"event\":\"skipped_step\",\"step\":2,\"non_finite\":\"loss\"}\n"
                   << "{\"event\":\"step\",\"step\":3,\"loss\":2.25}\n"
                   << "{\"event\":\"step\",\"step\":4,\"loss\":2}\n"
                   << "{\"event\":\"skipped_step\",\"step\":5}\n"
                   << "{\"event\":\"final\",\"steps\":5}\n"
                   << "{\"event\":\"step\",\"step\":6,\"lo";  // killed mid-append
  EXPECT_EQ(truncate_metrics_after(p, 3), 4);  // steps 4, 5, final, the partial line
  EXPECT_EQ(read_all(p),
            "{\"event\":\"step\",\"step\":1,\"loss\":2.5,\"step_s\":0.1}\n"
            "{\"event\":\"skipped_step\",\"step\":2,\"non_finite\":\"loss\"}\n"
            "{\"event\":\"step\",\"step\":3,\"loss\":2.25}\n");
  // Nothing to cut: the file is left as it is; a missing file stays missing.
  EXPECT_EQ(truncate_metrics_after(p, 3), 0);
  fs::remove(p);
  EXPECT_EQ(truncate_metrics_after(p, 3), 0);
  EXPECT_FALSE(fs::exists(p));
}

TEST(FiniteCheck, NamesTheFirstNonFiniteTensorInLayoutOrder) {
  ModelConfig m;
  m.d_model = 8;
  m.heads = 2;
  m.layers = 2;
  m.experts = 2;
  m.expert_hidden = 8;
  m.num_classes = 2;
  const ParamLayout layout(m);
  std::vector<float> arena(layout.total(), 0.5f);
  EXPECT_EQ(first_non_finite_tensor(layout, arena.data()), "");
  const auto& w2 = layout.at("layers.1.experts.w2");
  arena[w2.offset + w2.numel - 1] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(first_non_finite_tensor(layout, arena.data()), "layers.1.experts.w2");
  const auto& wq = layout.at("layers.0.wq");
  arena[wq.offset] = std::nanf("");
  EXPECT_EQ(first_non_finite_tensor(layout, arena.data()), "layers.0.wq");
}

double layout_numel(const ModelConfig& m) {
  double n = 0;
  const ParamLayout layout(m);  // not a temporary in the range-for: it would die before the loop
  for (const auto& t : layout.tensors()) n += static_cast<double>(t.numel);
  return n;
}

TEST(MemoryEstimate, ParameterCountMatchesTheLayout) {
  for (int moe_every : {1, 2, 3})
    for (const char* head : {"classifier", "lm"}) {
      RunConfig c;
      c.model.layers = 5;
      c.model.moe_every = moe_every;
      c.model.head = head;
      c.model.num_classes = 6;
      EXPECT_EQ(estimate_memory(c).params, layout_numel(c.model)) << moe_every << " " << head;
      c.model.vocab_size = 4096 + 260;  // data.tokenizer = words
      EXPECT_EQ(estimate_memory(c).params, layout_numel(c.model)) << moe_every << " " << head;
    }
}

TEST(MemoryEstimate, GrowsWithTheSizesItDependsOn) {
  RunConfig c;
  c.model.num_classes = 2;
  const MemoryEstimate base = estimate_memory(c);
  EXPECT_EQ(base.optimizer_bytes, 3 * base.param_bytes);
  RunConfig longer = c;
  longer.train.seq_len *= 2;
  EXPECT_GT(estimate_memory(longer).activation_bytes, 1.9 * base.activation_bytes);
  EXPECT_EQ(estimate_memory(longer).param_bytes, base.param_bytes);
  RunConfig wider = c;
  wider.model.experts *= 4;
  EXPECT_GT(estimate_memory(wider).param_bytes, 3 * base.param_bytes);
}

std::string usage_error_of(const RunConfig& c) {
  try {
    c.validate();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

// Absurd sizes are refused by validate() with the estimate and the machine's RAM, not by an
// allocation failure later (validate allocates nothing that scales with the sizes).
TEST(Limits, AbsurdSizesAreRefusedWithTheMemoryEstimate) {
  RunConfig seq;
  seq.train.seq_len = 1000000000;
  RunConfig experts;
  experts.model.experts = 1000000;
  RunConfig huge;
  huge.model.d_model = 1 << 20;
  huge.model.heads = 1 << 10;
  huge.model.expert_hidden = 1 << 20;
  RunConfig layers;
  layers.model.layers = 1 << 30;
  for (const RunConfig* c : {&seq, &experts, &huge, &layers}) {
    const std::string msg = usage_error_of(*c);
    EXPECT_NE(msg.find("this configuration needs about"), std::string::npos) << msg;
    EXPECT_NE(msg.find("GiB of RAM"), std::string::npos) << msg;
    EXPECT_NE(msg.find("activations"), std::string::npos) << msg;
  }
  // The estimate is what the message shows: over the machine's memory.
  EXPECT_GT(estimate_memory(experts).total(), available_memory_bytes());
  EXPECT_GT(available_memory_bytes(), 0);
}

TEST(Limits, NegativeSizesAreRefused) {
  auto refused = [](auto edit, const std::string& part) {
    RunConfig c;
    edit(c);
    const std::string msg = usage_error_of(c);
    EXPECT_NE(msg.find(part), std::string::npos) << "expected '" << part << "' in: " << msg;
  };
  refused([](RunConfig& c) { c.model.d_model = -64; }, "model.d_model");
  refused([](RunConfig& c) { c.model.experts = -1; }, "model.experts must be positive");
  refused([](RunConfig& c) { c.model.expert_hidden = -8; }, "model.expert_hidden must be positive");
  refused([](RunConfig& c) { c.train.seq_len = -5; }, "train.seq_len");
  refused([](RunConfig& c) { c.train.batch_size = -1; }, "train.batch_size");
  refused([](RunConfig& c) { c.train.threads = -2; }, "train.threads must be >= 0");
  refused([](RunConfig& c) { c.train.max_bad_steps = 0; }, "train.max_bad_steps must be >= 1");
  refused([](RunConfig& c) { c.data.synthetic_train = -100; }, "data.synthetic_train");
  refused([](RunConfig& c) { c.data.long_context_fraction = 2; }, "data.long_context_fraction");
  refused([](RunConfig& c) { c.data.long_context_chars = -1; }, "data.long_context_chars");
}

// Found by fuzzing: a value the INI reader cannot give back (config.ini and every checkpoint store
// the resolved configuration as INI) is refused instead of silently changing on the way back.
TEST(ConfigParser, ValuesThatCannotRoundTripAreRefused) {
  for (const std::string bad : {"/data#1", "a\nb", " lead", "trail\t"}) {
    RunConfig c;
    c.data.path = bad;
    EXPECT_NE(usage_error_of(c).find("cannot be stored in config.ini"), std::string::npos) << bad;
  }
  RunConfig ok;
  ok.data.path = "/data/with spaces/and;semicolons";
  ok.model.init_from = "runs/pre train/checkpoints/step-00000010.h5";
  EXPECT_EQ(usage_error_of(ok), "");
  EXPECT_EQ(load_run_config_text(ok.to_ini(), false).to_ini(), ok.to_ini());
}

TEST(Limits, ShippedConfigsFit) {
  for (const auto& entry : fs::directory_iterator(fs::path(SMT_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".ini") continue;
    RunConfig c = load_run_config_text(read_all(entry.path().string()), false);
    if (c.device != "cpu") continue;  // GPU configs: the RAM check is for CPU runs
    if (c.data.source == "liar") c.data.path = "/data";
    EXPECT_EQ(usage_error_of(c), "") << entry.path();
  }
}

}  // namespace
}  // namespace smt

namespace smt {
namespace {

// Found by fuzzing: Boost.Program_options loops forever formatting an error about an option or
// value that contains one of its own placeholders. Such input is refused first, with exit code 2.
TEST(ConfigParser, BoostPlaceholdersAreRefusedNotHung) {
  for (const std::string arg : {"--model.d_model=%value%", "--x%canonical_option%=1", "--%option%"}) {
    std::vector<std::string> args = {"train", arg};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    RunConfig c;
    try {
      parse_run_config(static_cast<int>(argv.size()), argv.data(), "train", "", c);
      ADD_FAILURE() << arg << " accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("which smt cannot accept"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(load_run_config_text("[train]\nsteps = %value%\n"), UsageError);
  EXPECT_THROW(load_run_config_text("[model]\nexper%invalid_line% 2\n"), UsageError);
  // A lone or spaced percent sign is fine.
  EXPECT_NO_THROW(load_run_config_text("[data]\npath = /data/100% real/ and 5 % more\n", false));
}

}  // namespace
}  // namespace smt
