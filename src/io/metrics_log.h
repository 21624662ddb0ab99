// metrics.jsonl on resume: the run appends a record per logged step BEFORE that step's checkpoint,
// so a run killed after logging step s but before (or while) writing its checkpoint leaves records
// the resumed run will write again. Resuming therefore cuts metrics.jsonl back to the checkpoint:
// every record of a later step (step records, skipped_step events), every final record and any
// incomplete last line (a kill in the middle of an append) is dropped, so the file holds each step
// at most once and reads exactly like an uninterrupted run's.
#pragma once
#include <cstdint>
#include <string>

namespace smt {

// Rewrites PATH (atomically: temp file + rename) keeping only complete records whose "step" is
// <= last_step. Returns the number of lines dropped. A missing file is left missing (returns 0).
// Throws Error naming the path if it cannot be read or rewritten.
int64_t truncate_metrics_after(const std::string& path, int64_t last_step);

}  // namespace smt
