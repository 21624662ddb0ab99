// `smt bench exchange` (run under mpirun): the MoE layer's communication — dispatch to the
// experts' owners and combine back, forward and backward (4 moves) — against bare
// MPI_Alltoallv calls moving exactly the same bytes, in the same run. Prints one JSON line (rank 0).
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstring>
#include <iostream>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "io/json.h"
#include "kernels/moe.h"
#include "parallel/expert_exchange.h"
#include "parallel/parallel_context.h"

namespace po = boost::program_options;

namespace smt {

int cmd_bench_exchange(int argc, char** argv) {
  int64_t tokens = 4096, d_model = 512;
  int experts = 8, top_k = 2, warmup = 3, repeat = 20;
  uint64_t seed = 1;
  po::options_description desc("smt bench exchange (under mpirun -np W): MoE dispatch+combine vs bare all-to-all-v");
  desc.add_options()("help", "this help")("tokens", po::value(&tokens)->default_value(tokens), "tokens per rank")(
      "d_model", po::value(&d_model)->default_value(d_model), "row width (floats)")(
      "experts", po::value(&experts)->default_value(experts), "experts E (P = min(W, E) must divide E)")(
      "top_k", po::value(&top_k)->default_value(top_k), "assignments per token")(
      "warmup", po::value(&warmup)->default_value(warmup), "untimed repetitions")(
      "repeat", po::value(&repeat)->default_value(repeat), "timed repetitions (median reported)")(
      "seed", po::value(&seed)->default_value(seed), "routing seed");
  if (!parse_command_options(argc, argv, desc)) return 0;
  SMT_USAGE_CHECK(tokens > 0 && d_model > 0 && top_k >= 1 && top_k <= experts && repeat > 0 && warmup >= 0,
                  "bench exchange: sizes must be positive and top_k <= experts");
  ParallelContext par = make_parallel_context(make_world_communicator(), 0, experts, 1 << 30);
  Communicator& group = *par.expert_group;
  const int P = group.size();

  // Uniform random routing (distinct experts per token), the plan, and the rows in plan order.
  Rng rng(seed, 77 + par.world_rank());
  std::vector<int32_t> idx(tokens * top_k);
  for (int64_t t = 0; t < tokens; ++t)
    for (int j = 0; j < top_k; ++j) {
      int32_t e = static_cast<int32_t>(rng.below(experts));
      for (int i = 0; i < j; ++i)
        if (idx[t * top_k + i] == e) e = (e + 1) % experts, i = -1;
      idx[t * top_k + j] = e;
    }
  const cpu::RoutingPlan plan = cpu::build_routing_plan(idx.data(), tokens, experts, top_k, 0);
  std::vector<float> rows(plan.num_rows() * d_model);
  for (auto& v : rows) v = static_cast<float>(rng.normal());

  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  // smt: build the exchange (count exchange included), then forward dispatch+combine and the
  // backward's two moves, as in one MoE layer's training step.
  std::vector<double> t_smt, t_raw;
  std::vector<float> expert_rows, back(rows.size());
  int64_t sent_floats = 0;
  for (int it = 0; it < warmup + repeat; ++it) {
    group.barrier();
    Timer t;
    ExpertExchange ex(group, plan.num_tokens_per_expert);
    expert_rows.resize(ex.num_expert_rows() * d_model);
    for (int move = 0; move < 2; ++move) {  // forward, then backward
      ex.to_experts(rows.data(), expert_rows.data(), d_model);
      ex.from_experts(expert_rows.data(), back.data(), d_model);
    }
    double dt = t.seconds();
    par.world->all_reduce_max(&dt, 1);
    if (it >= warmup) t_smt.push_back(dt);
    sent_floats = ex.num_plan_rows() * d_model;
  }
  SMT_CHECK(back == rows, "bench exchange: rows did not come back unchanged");
  // Bare all-to-all-v of the same bytes: counts precomputed (not timed), 4 calls.
  std::vector<int64_t> counts_all(static_cast<size_t>(P) * experts);
  group.all_gather(plan.num_tokens_per_expert.data(), counts_all.data(), experts * static_cast<int64_t>(sizeof(int64_t)));
  const int me = group.rank(), El = experts / P;
  std::vector<int64_t> send(P, 0), recv(P, 0);
  for (int q = 0; q < P; ++q)
    for (int e = 0; e < El; ++e) {
      send[q] += counts_all[me * experts + q * El + e] * d_model;
      recv[q] += counts_all[q * experts + me * El + e] * d_model;
    }
  int64_t recv_total = 0;
  for (int q = 0; q < P; ++q) recv_total += recv[q];
  std::vector<float> raw_recv(recv_total), raw_back(rows.size());
  for (int it = 0; it < warmup + repeat; ++it) {
    group.barrier();
    Timer t;
    for (int move = 0; move < 2; ++move) {
      group.all_to_all_v(rows.data(), send.data(), raw_recv.data(), recv.data());
      group.all_to_all_v(raw_recv.data(), recv.data(), raw_back.data(), send.data());
    }
    double dt = t.seconds();
    par.world->all_reduce_max(&dt, 1);
    if (it >= warmup) t_raw.push_back(dt);
  }
  const double s = median(t_smt), r = median(t_raw);
  if (par.world_rank() == 0) {
    JsonObject o;
    o.add("bench", "exchange").add("world_size", par.world_size()).add("expert_parallel", P)
        .add("tokens_per_rank", tokens).add("d_model", d_model).add("experts", experts).add("top_k", top_k)
        .add("bytes_per_rank_per_move", static_cast<double>(sent_floats) * sizeof(float))
        .add("smt_s", s).add("alltoallv_s", r).add("ratio", s / r);
    std::cout << o.str() << std::endl;
  }
  return 0;
}

}  // namespace smt
