// The model trained on W ranks (each on its shard of the global batch, experts split over the
// expert-parallel group) against the same model in one process on the whole batch: losses,
// gradient norm and parameters after AdamW steps agree up to floating-point reassociation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "data/batch.h"
#include "model/model.h"
#include "parallel/parallel_context.h"

namespace {

smt::ModelConfig tiny_config(double capacity_factor, int moe_every, const std::string& head) {
  smt::ModelConfig c;
  c.d_model = 32;
  c.layers = 2;
  c.heads = 2;
  c.experts = 8;
  c.top_k = 2;
  c.expert_hidden = 48;
  c.capacity_factor = capacity_factor;
  c.moe_every = moe_every;
  c.head = head;
  c.num_classes = 3;
  c.attention = "local";
  c.block_size = 8;
  c.window = 8;
  return c;
}

smt::Batch random_batch(int64_t B, int64_t N, uint64_t seed) {
  smt::Batch b;
  b.batch_size = B;
  b.seq_len = N;
  smt::Rng rng(seed, 5);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t len = N / 2 + static_cast<int64_t>(rng.below(N / 2 + 1));  // padded rows
    for (int64_t j = 0; j < N; ++j) {
      b.tokens.push_back(j < len ? static_cast<int32_t>(rng.below(256)) : 0);
      b.valid.push_back(j < len ? 1 : 0);
    }
    for (int64_t j = 0; j < N; ++j) b.lm_targets.push_back(j + 1 < len ? b.tokens[i * N + j + 1] : -1);
    b.labels.push_back(static_cast<int32_t>(rng.below(3)));
    b.groups.push_back(0);
    b.example_idx.push_back(i);
  }
  return b;
}

struct Case {
  double capacity;
  int moe_every;
  const char* head;
};

class ModelParallelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModelParallelTest, MatchesOneProcess) {
  const Case cs = GetParam();
  const smt::ModelConfig cfg = tiny_config(cs.capacity, cs.moe_every, cs.head);
  smt::TrainConfig train;
  train.steps = 3;
  train.lr = 3e-3f;
  train.warmup = 0;
  const int64_t B = 8, N = 32;
  smt::ParallelContext ctx = smt::make_parallel_context(smt::make_world_communicator(), 0, cfg.experts, B);
  const auto [first, last] = ctx.batch_shard(B);

  smt::Model ref(cfg, 0.01f, 0.001f, 42), par(cfg, 0.01f, 0.001f, 42);
  ref.init_params(9);
  par.init_params(9);
  par.set_parallel(&ctx);
  for (int64_t step = 1; step <= train.steps; ++step) {
    const smt::Batch batch = random_batch(B, N, 100 + step);
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
    ref.backward();
    par.backward();
    const double nr = smt::optimizer_step(ref, train, step), np = smt::optimizer_step(par, train, step);
    EXPECT_NEAR(np, nr, 1e-5 * nr) << "gradient norm, step " << step;
  }
  smt::gather_experts(par);  // every rank now holds the whole model
  const int64_t n = ref.layout().total();
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
  EXPECT_GT(n, 0);
  RecordProperty("worst_relative_param_diff", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Modes, ModelParallelTest,
                         ::testing::Values(Case{0.0, 1, "classifier"}, Case{1.0, 1, "classifier"},
                                           Case{0.0, 2, "classifier"}, Case{1.25, 1, "lm"}),
                         [](const auto& info) {
                           const Case c = info.param;
                           return std::string(c.head) + (c.capacity > 0 ? "_capacity" : "_dropless") +
                                  (c.moe_every > 1 ? "_dense_layer" : "");
                         });

}  // namespace
