// The multi-rank parts of `smt train`: start-up checks every rank agrees on, evaluation split
// over the ranks, and the per-rank numbers of a step record. With one rank each is trivial.
#pragma once
#include <cstdint>
#include <string>

#include "eval/evaluator.h"
#include "io/json.h"
#include "model/model.h"
#include "parallel/parallel_context.h"

namespace smt {

// Every rank hashes its resolved configuration; if they differ, every rank throws a UsageError
// naming the ranks whose configuration differs from rank 0's. Collective.
void check_same_config_on_all_ranks(Communicator& world, const std::string& config_text);

// Rank 0's string on every rank (e.g. the checkpoint to resume from). Collective.
std::string broadcast_string(Communicator& world, const std::string& value);

// Each rank predicts a contiguous share of `data` with its full (gathered) model; every rank
// returns the predictions of the whole set in data order. Collective.
Predictions predict_on_all_ranks(InferenceModel& model, const Dataset& data, int64_t seq_len, int64_t batch_size,
                                 Communicator& world);

// {"world_size", "expert_parallel", "rows_sent", "rows_received", "expert_rows" (per rank),
//  "step_s_max", "step_s_min"}: this step's exchange and the slowest rank's time. Collective.
JsonObject parallel_step_record(const ParallelContext& ctx, const ExchangeStats& stats, double step_seconds);

// Test hook for the fault tests: SMT_TEST_FAULT="RANK:STEP:throw|kill|hang|slow" makes world rank
// RANK throw an error, SIGKILL itself, sleep forever or sleep 5 s (the step watchdog's cases) at the
// start of STEP. Unset: nothing.
void inject_test_fault(int world_rank, int64_t step);

}  // namespace smt
