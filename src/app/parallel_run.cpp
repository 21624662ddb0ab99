// Multi-rank helpers of `smt train` (see parallel_run.h).
#include "app/parallel_run.h"

#include <chrono>
#include <thread>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <vector>

#include "core/error.h"

namespace smt {

namespace {
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

void check_same_config_on_all_ranks(Communicator& world, const std::string& config_text) {
  const int W = world.size();
  if (W == 1) return;
  const uint64_t mine = fnv1a(config_text);
  std::vector<uint64_t> all(W);
  world.all_gather(&mine, all.data(), sizeof(uint64_t));
  std::string differing;
  for (int r = 1; r < W; ++r)
    if (all[r] != all[0]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  SMT_USAGE_CHECK(differing.empty(), "the ranks were started with different configurations: rank(s) ", differing,
                  " differ from rank 0 (same config file, overrides and data on every rank are required)");
}

std::string broadcast_string(Communicator& world, const std::string& value) {
  if (world.size() == 1) return value;
  int64_t n = static_cast<int64_t>(value.size());
  world.broadcast(&n, sizeof n, 0);
  std::string out = world.rank() == 0 ? value : std::string(static_cast<size_t>(n), '\0');
  if (n > 0) world.broadcast(out.data(), n, 0);
  return out;
}

Predictions predict_on_all_ranks(InferenceModel& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                                 Communicator& world) {
  const int W = world.size();
  if (W == 1) return predict(model, data, seq_len, batch_size);
  const int64_t n = static_cast<int64_t>(data.examples.size()), r = world.rank();
  const int64_t first = n * r / W, last = n * (r + 1) / W, max_share = (n + W - 1) / W;
  Dataset share;
  share.name = data.name;
  share.class_names = data.class_names;
  share.group_names = data.group_names;
  share.leaking = data.leaking;
  share.examples.assign(data.examples.begin() + first, data.examples.begin() + last);
  Predictions mine = predict(model, share, seq_len, batch_size);
  const int C = model.config().num_classes;
  // Fixed-size blocks of max_share rows for all_gather; rank r's rows are n*r/W .. n*(r+1)/W.
  std::vector<float> block(static_cast<size_t>(max_share * C), 0.0f), all(static_cast<size_t>(W * max_share * C));
  std::copy(mine.probs.begin(), mine.probs.end(), block.begin());
  world.all_gather(block.data(), all.data(), max_share * C * static_cast<int64_t>(sizeof(float)));
  Predictions p;
  p.num_classes = C;
  for (int q = 0; q < W; ++q) {
    const int64_t count = n * (q + 1) / W - n * q / W;
    p.probs.insert(p.probs.end(), all.begin() + q * max_share * C, all.begin() + (q * max_share + count) * C);
  }
  for (const auto& ex : data.examples) {
    p.labels.push_back(ex.label);
    p.groups.push_back(ex.group);
  }
  p.tokens_per_expert = mine.tokens_per_expert;
  for (auto& layer : p.tokens_per_expert) {
    std::vector<double> sums(layer.begin(), layer.end());
    world.all_reduce_sum(sums.data(), static_cast<int64_t>(sums.size()));
    for (size_t e = 0; e < layer.size(); ++e) layer[e] = static_cast<int64_t>(sums[e]);
  }
  return p;
}

JsonObject parallel_step_record(const ParallelContext& ctx, const ExchangeStats& stats, double step_seconds) {
  const int W = ctx.world_size();
  const double mine[4] = {static_cast<double>(stats.rows_sent), static_cast<double>(stats.rows_received),
                          static_cast<double>(stats.expert_rows), step_seconds};
  std::vector<double> all(static_cast<size_t>(4 * W));
  ctx.world->all_gather(mine, all.data(), 4 * sizeof(double));
  std::vector<int64_t> sent(W), received(W), load(W);
  double slowest = 0, fastest = all[3];
  for (int r = 0; r < W; ++r) {
    sent[r] = static_cast<int64_t>(all[4 * r]);
    received[r] = static_cast<int64_t>(all[4 * r + 1]);
    load[r] = static_cast<int64_t>(all[4 * r + 2]);
    slowest = std::max(slowest, all[4 * r + 3]);
    fastest = std::min(fastest, all[4 * r + 3]);
  }
  JsonObject o;
  o.add("world_size", W).add("expert_parallel", ctx.expert_parallel).add("rows_sent", sent)
      .add("rows_received", received).add("expert_rows", load).add("step_s_max", slowest).add("step_s_min", fastest);
  return o;
}

void inject_test_fault(int world_rank, int64_t step) {
  static const char* spec = std::getenv("SMT_TEST_FAULT");
  if (spec == nullptr) return;
  int rank = -1;
  long long at_step = -1;
  char mode[16] = {0};
  if (std::sscanf(spec, "%d:%lld:%15s", &rank, &at_step, mode) != 3) return;
  if (rank != world_rank || at_step != step) return;
  if (std::string(mode) == "kill") std::raise(SIGKILL);
  if (std::string(mode) == "hang")  // a rank that stops making progress (the step watchdog's case)
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  if (std::string(mode) == "slow") {  // a slow but live step, inside the watchdog's timeout
    std::this_thread::sleep_for(std::chrono::seconds(5));
    return;
  }
  throw Error("injected test fault (SMT_TEST_FAULT) at step " + std::to_string(step));
}

}  // namespace smt
