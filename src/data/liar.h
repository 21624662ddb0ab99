// LIAR (Wang 2017) reader: 14 tab-separated columns, no header, no quoting.
// Columns: id, label, statement, subjects, speaker, job, state, party, 5 credit-history counts
// (barely-true, false, half-true, mostly-true, pants-on-fire; they INCLUDE the statement's own
// label, so features from them leak), context.
// Labels (six-way, in order): pants-fire, false, barely-true, half-true, mostly-true, true.
// Binary view: the first three are false (0), the last three true (1).
#pragma once
#include <array>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/tokenizer.h"

namespace smt {

inline const std::array<std::string, 6> kLiarLabels = {"pants-fire", "false", "barely-true",
                                                       "half-true", "mostly-true", "true"};

struct LiarRecord {
  std::string id, label, statement, subjects, speaker, job, state, party, context;
  std::array<int, 5> credit{};  // barely-true, false, half-true, mostly-true, pants-on-fire counts
  int label_idx = 0;            // index into kLiarLabels
};

// Reads a LIAR .tsv. A malformed line (wrong column count, unknown label, non-integer count)
// throws smt::Error "PATH:LINE: what is wrong". Empty trailing lines are ignored.
std::vector<LiarRecord> read_liar_tsv(const std::string& path);

// Which fields become model input. Parsed from "statement", "statement+metadata",
// "statement+metadata+credit" (credit => leaking).
struct LiarFields {
  bool metadata = false;  // subjects, speaker, job, state, party, context
  bool credit = false;    // the five credit-history counts (leaks the label)
};
LiarFields parse_liar_fields(const std::string& spec);  // throws UsageError on unknown

// binary: two classes (false, true) else six. Fields are encoded with `tokenizer`.
Dataset make_liar_dataset(const std::vector<LiarRecord>& records, const LiarFields& fields, bool binary,
                          const std::string& name, const Tokenizer& tokenizer = {});

}  // namespace smt
