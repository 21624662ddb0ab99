// Config: INI parsing, overrides, validation messages, INI round trip.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/config.h"

namespace smt {
namespace {

TEST(Config, ParsesSectionsAndKeepsDefaults) {
  const RunConfig c = load_run_config_text("seed = 7\n[model]\nd_model = 64\nheads = 4\nattention = bigbird\n[train]\nlr = 0.005\n");
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.model.heads, 4);
  EXPECT_EQ(c.model.attention, "bigbird");
  EXPECT_FLOAT_EQ(c.train.lr, 0.005f);
  EXPECT_EQ(c.model.experts, RunConfig{}.model.experts);
}

TEST(Config, UnknownKeyIsUsageError) {
  try {
    load_run_config_text("[model]\nd_modle = 64\n");
    FAIL() << "unknown key accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("d_modle"), std::string::npos) << e.what();
  }
}

TEST(Config, WrongTypeIsUsageError) {
  EXPECT_THROW(load_run_config_text("[model]\nd_model = wide\n"), UsageError);
}

TEST(Config, InconsistentValuesNameTheProblem) {
  auto message = [](const std::string& ini) -> std::string {
    try {
      load_run_config_text(ini);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message("[model]\nd_model = 100\nheads = 3\n").find("does not divide"), std::string::npos);
  EXPECT_NE(message("[model]\ntop_k = 9\nexperts = 8\n").find("top_k"), std::string::npos);
  EXPECT_NE(message("[model]\nattention = local\nwindow = 512\n[train]\nseq_len = 256\n").find("window"),
            std::string::npos);
  EXPECT_NE(message("[model]\nattention = starburst\n").find("starburst"), std::string::npos);
  EXPECT_NE(message("[data]\nsource = liar\n").find("data.path"), std::string::npos);
}

TEST(Config, IniRoundTripPreservesEveryValue) {
  RunConfig c;
  c.seed = 99;
  c.model.d_model = 96;
  c.model.heads = 3;
  c.model.causal = true;
  c.model.capacity_factor = 1.25;
  c.train.lr = 3e-4f;
  c.data.fields = "statement+metadata";
  c.run_dir = "some/where";
  const RunConfig back = load_run_config_text(c.to_ini());
  EXPECT_EQ(back.to_ini(), c.to_ini());
  EXPECT_EQ(back.seed, 99u);
  EXPECT_EQ(back.model.d_model, 96);
  EXPECT_TRUE(back.model.causal);
  EXPECT_DOUBLE_EQ(back.model.capacity_factor, 1.25);
  EXPECT_FLOAT_EQ(back.train.lr, 3e-4f);
  EXPECT_EQ(back.data.fields, "statement+metadata");
  EXPECT_EQ(back.run_dir, "some/where");
}

}  // namespace
}  // namespace smt
