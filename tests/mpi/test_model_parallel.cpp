// The model trained on W ranks (each on its shard of the global batch, experts split over the
// expert-parallel group) against the same model in one process on the whole batch: losses,
// gradient norm and parameters after AdamW steps agree up to floating-point reassociation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "support/random_batch.h"
#include "support/tiny_model.h"
#include "data/batch.h"
#include "model/model.h"
#include "parallel/parallel_context.h"

namespace {

smt::ModelConfig tiny_config(double capacity_factor, int moe_every, const std::string& head) {
  smt::testing_support::TinyModel tm;
  tm.d_model = 32;
  tm.expert_hidden = 48;
  tm.head = head;
  tm.capacity_factor = capacity_factor;
  tm.moe_every = moe_every;
  tm.block_size = 8;
  tm.window = 8;
  smt::ModelConfig c = smt::testing_support::tiny_model_config(tm);
  c.causal = false;  // these cases were written bidirectional, the LM head included
  return c;
}


struct Case {
  double capacity;
  int moe_every;
  const char* head;
  bool one_expert = false;  // zero router weights + top-1: every token of every rank goes to expert 0
};

class ModelParallelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModelParallelTest, MatchesOneProcess) {
  const Case cs = GetParam();
  smt::ModelConfig cfg = tiny_config(cs.capacity, cs.moe_every, cs.head);
  if (cs.one_expert) cfg.top_k = 1;
  const smt::TrainConfig train = smt::testing_support::tiny_train_config();
  const int64_t B = 8, N = 32;
  smt::ParallelContext ctx = smt::make_parallel_context(smt::make_world_communicator(), 0, cfg.experts, B);
  const auto [first, last] = ctx.batch_shard(B);

  smt::Model ref(cfg, 0.01f, 0.001f, 42), par(cfg, 0.01f, 0.001f, 42);
  ref.init_params(9);
  par.init_params(9);
  par.set_parallel(&ctx);
  if (cs.one_expert)  // equal router logits: ties go to the lowest expert index
    for (smt::Model* m : {&ref, &par})
      for (int l = 0; l < cfg.layers; ++l) {
        const auto& t = m->layout().at("layers." + std::to_string(l) + ".router");
        std::fill(m->params() + t.offset, m->params() + t.offset + t.numel, 0.0f);
      }
  for (int64_t step = 1; step <= train.steps; ++step) {
    const smt::Batch batch = smt::testing_support::random_padded_batch(B, N, 3, 100 + step);
    const smt::Batch shard = smt::slice_rows(batch, first, last);
    ref.zero_grads();
    par.zero_grads();
    const smt::LossParts lr = ref.forward(batch), lp = par.forward(shard);
    EXPECT_NEAR(lp.total, lr.total, 1e-6 * std::fabs(lr.total)) << "step " << step;
    EXPECT_NEAR(lp.aux, lr.aux, 1e-6 * std::fabs(lr.aux) + 1e-12) << "step " << step;
    EXPECT_NEAR(lp.z, lr.z, 1e-6 * std::fabs(lr.z) + 1e-12) << "step " << step;
    EXPECT_EQ(lp.num_targets, lr.num_targets);
    for (size_t l = 0; l < ref.routing().size(); ++l) {
      EXPECT_EQ(par.routing()[l].tokens_per_expert, ref.routing()[l].tokens_per_expert) << "layer " << l;
      EXPECT_EQ(par.routing()[l].dropped, ref.routing()[l].dropped) << "layer " << l;
    }
    if (cs.one_expert && step == 1)
      EXPECT_EQ(ref.routing()[0].tokens_per_expert[0], B * N) << "every token should pick expert 0";
    ref.backward();
    par.backward();
    const double nr = smt::optimizer_step(ref, train, step), np = smt::optimizer_step(par, train, step);
    EXPECT_NEAR(np, nr, 1e-5 * nr) << "gradient norm, step " << step;
  }
  smt::gather_experts(par);  // every rank now holds the whole model
  double worst = 0;
  for (const auto& t : ref.layout().tensors()) {
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < t.numel; ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(par.params()[t.offset + i] - ref.params()[t.offset + i])));
      norm = std::max(norm, static_cast<double>(std::fabs(ref.params()[t.offset + i])));
    }
    worst = std::max(worst, diff / (norm + 1e-12));
    EXPECT_LE(diff, 1e-5 * (norm + 1e-6)) << t.name << " after " << train.steps << " steps";
  }
  RecordProperty("worst_relative_param_diff", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Modes, ModelParallelTest,
                         ::testing::Values(Case{0.0, 1, "classifier"}, Case{1.0, 1, "classifier"},
                                           Case{0.0, 2, "classifier"}, Case{1.25, 1, "lm"},
                                           Case{0.0, 1, "classifier", true}),
                         [](const auto& info) {
                           const Case c = info.param;
                           return std::string(c.head) + (c.capacity > 0 ? "_capacity" : "_dropless") +
                                  (c.moe_every > 1 ? "_dense_layer" : "") + (c.one_expert ? "_all_to_expert0" : "");
                         });

}  // namespace
