// Whole-model parity with the PyTorch twin (tests/torch_twin): the committed fixtures hold a
// tiny config, its parameters, a batch, and the twin's float64 logits, losses, every gradient,
// and the losses and parameters of 5 AdamW steps. smt (fp32) must match within the stated
// tolerances. Regenerate with: python3 tests/torch_twin/make_fixture.py
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "data/tokenizer.h"
#include "fixture_io.h"
#include "model/config.h"
#include "model/model.h"

namespace smt {
namespace {

// fp32 against float64: errors are measured relative to the reference tensor's norm.
constexpr double kLogitTol = 2e-5;   // ||a - b|| / ||b|| for logits
constexpr double kGradTol = 5e-4;    // per gradient tensor, norm-relative (fp32 backward through 2 layers)
constexpr double kLossTol = 1e-5;    // relative, per scalar loss
constexpr double kParamTol = 1e-4;   // per parameter tensor after 5 AdamW steps, norm-relative

double rel_norm_error(const float* a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

struct Loaded {
  std::map<std::string, test::FixtureTensor> fx;
  RunConfig cfg;
  Batch batch;
};

Loaded load(const std::string& name) {
  Loaded L;
  L.fx = test::read_fixture(std::string(SMT_SOURCE_DIR) + "/tests/fixtures/" + name);
  L.cfg = load_run_config_text(L.fx.at("config").str, /*validate=*/false);
  const auto& tok = L.fx.at("tokens");
  const int64_t B = tok.dims[0], N = tok.dims[1];
  Batch& b = L.batch;
  b.batch_size = B;
  b.seq_len = N;
  b.tokens.resize(B * N);
  b.valid.resize(B * N);
  b.lm_targets.assign(B * N, -1);
  for (int64_t i = 0; i < B * N; ++i) {
    b.tokens[i] = static_cast<int32_t>(tok.i64[i]);
    b.valid[i] = b.tokens[i] != kPadToken;
  }
  for (int64_t r = 0; r < B; ++r)
    for (int64_t n = 0; n + 1 < N; ++n)
      if (b.tokens[r * N + n + 1] != kPadToken) b.lm_targets[r * N + n] = b.tokens[r * N + n + 1];
  b.labels.assign(B, 0);
  if (L.fx.count("labels"))
    for (int64_t r = 0; r < B; ++r) b.labels[r] = static_cast<int32_t>(L.fx.at("labels").i64[r]);
  b.groups.assign(B, 0);
  return L;
}

void load_params(Model& model, const std::map<std::string, test::FixtureTensor>& fx, const std::string& prefix) {
  int loaded = 0;
  for (const auto& spec : model.layout().tensors()) {
    const auto it = fx.find(prefix + spec.name);
    ASSERT_NE(it, fx.end()) << "fixture lacks " << prefix << spec.name;
    ASSERT_EQ(it->second.dims, spec.shape) << spec.name;
    float* p = model.param(spec.name);
    for (int64_t i = 0; i < spec.numel; ++i) p[i] = static_cast<float>(it->second.f64[i]);
    ++loaded;
  }
  EXPECT_GT(loaded, 10);
}

class ModelParity : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelParity, ForwardBackwardAndAdamWMatchTheTwin) {
  Loaded L = load(GetParam());
  const RunConfig& cfg = L.cfg;
  Model model(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  load_params(model, L.fx, "param.");
  if (HasFatalFailure()) return;

  model.zero_grads();
  const LossParts loss = model.forward(L.batch);
  const auto& ref_logits = L.fx.at("logits").f64;
  ASSERT_EQ(model.logits().size(), ref_logits.size());
  EXPECT_LT(rel_norm_error(model.logits().data(), ref_logits), kLogitTol);
  EXPECT_NEAR(loss.task, L.fx.at("task_loss").f64[0], kLossTol * std::abs(L.fx.at("task_loss").f64[0]));
  EXPECT_NEAR(loss.aux, L.fx.at("aux_loss").f64[0], kLossTol * std::abs(L.fx.at("aux_loss").f64[0]) + 1e-9);
  EXPECT_NEAR(loss.z, L.fx.at("z_loss").f64[0], kLossTol * std::abs(L.fx.at("z_loss").f64[0]) + 1e-9);
  EXPECT_NEAR(loss.total, L.fx.at("loss").f64[0], kLossTol * std::abs(L.fx.at("loss").f64[0]));

  // Routing decisions and kept tokens per expert are discrete: they must agree exactly.
  for (int l = 0; l < cfg.model.layers; ++l) {
    const auto it = L.fx.find("tokens_per_expert." + std::to_string(l));
    if (it == L.fx.end()) continue;
    const auto& r = model.routing()[l];
    ASSERT_EQ(r.tokens_per_expert.size(), it->second.i64.size());
    for (size_t e = 0; e < r.tokens_per_expert.size(); ++e)
      EXPECT_EQ(r.tokens_per_expert[e], it->second.i64[e]) << "layer " << l << " expert " << e;
  }

  model.backward();
  for (const auto& spec : model.layout().tensors()) {
    const auto& ref = L.fx.at("grad." + spec.name).f64;
    double ref_norm = 0;
    for (double g : ref) ref_norm += g * g;
    if (ref_norm == 0) continue;  // e.g. an expert no token reached
    EXPECT_LT(rel_norm_error(model.grad(spec.name), ref), kGradTol) << "gradient of " << spec.name;
  }

  // 5 AdamW steps on the same batch: losses before each update, then the parameters.
  const auto& ref_losses = L.fx.at("adamw_loss").f64;
  Model fresh(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
  load_params(fresh, L.fx, "param.");
  for (size_t s = 1; s <= ref_losses.size(); ++s) {
    fresh.zero_grads();
    const LossParts ls = fresh.forward(L.batch);
    EXPECT_NEAR(ls.total, ref_losses[s - 1], 1e-4 * std::abs(ref_losses[s - 1])) << "AdamW step " << s;
    fresh.backward();
    optimizer_step(fresh, cfg.train, static_cast<int64_t>(s));
  }
  for (const auto& spec : fresh.layout().tensors())
    EXPECT_LT(rel_norm_error(fresh.param(spec.name), L.fx.at("final_param." + spec.name).f64), kParamTol)
        << "parameter " << spec.name << " after " << ref_losses.size() << " AdamW steps";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelParity,
                         ::testing::Values("parity_classifier.bin", "parity_lm.bin", "parity_sparse.bin",
                                           "parity_random.bin"),
                         [](const auto& info) {
                           std::string n = info.param;
                           return n.substr(7, n.size() - 11);
                         });

}  // namespace
}  // namespace smt
