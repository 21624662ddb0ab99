// LIAR reader: one record per line, fields split on TAB only (no quote handling: statements
// contain '"' and CSV quoting would merge rows). Every malformed line throws "PATH:LINE: ...".
// Credit counts are plain non-negative integers (digits only), as in the distributed files.
#include "data/liar.h"

#include <fstream>

#include "core/error.h"
#include "data/tokenizer.h"

namespace smt {
namespace {

constexpr size_t kLiarColumns = 14;

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> cols;
  size_t start = 0;
  while (true) {
    const size_t tab = line.find('\t', start);
    if (tab == std::string::npos) {
      cols.push_back(line.substr(start));
      break;
    }
    cols.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
  return cols;
}

// Digits only, at most 9 of them (fits int); anything else (sign, ".0", blank) is rejected.
bool parse_count(const std::string& s, int* out) {
  if (s.empty() || s.size() > 9) return false;
  int v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + (ch - '0');
  }
  *out = v;
  return true;
}

}  // namespace

std::vector<LiarRecord> read_liar_tsv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open LIAR file " + path);
  static const char* kCountNames[5] = {"barely-true", "false", "half-true", "mostly-true", "pants-on-fire"};
  std::vector<LiarRecord> records;
  std::string line;
  int64_t line_no = 0;
  int64_t pending_blank = 0;  // blank lines are allowed only at the end of the file
  int64_t first_blank = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {
      if (pending_blank++ == 0) first_blank = line_no;
      continue;
    }
    const auto where = [&] { return detail::concat(path, ":", line_no, ": "); };
    if (pending_blank > 0)
      throw Error(detail::concat(path, ":", first_blank, ": empty line inside the file"));
    auto cols = split_tabs(line);
    if (cols.size() != kLiarColumns)
      throw Error(detail::concat(where(), "expected ", kLiarColumns, " tab-separated columns, found ", cols.size()));
    LiarRecord r;
    r.id = cols[0];
    r.label = cols[1];
    r.label_idx = -1;
    for (size_t i = 0; i < kLiarLabels.size(); ++i)
      if (cols[1] == kLiarLabels[i]) r.label_idx = static_cast<int>(i);
    if (r.label_idx < 0)
      throw Error(detail::concat(where(), "unknown label '", cols[1],
                                 "' (expected pants-fire, false, barely-true, half-true, mostly-true or true)"));
    r.statement = cols[2];
    r.subjects = cols[3];
    r.speaker = cols[4];
    r.job = cols[5];
    r.state = cols[6];
    r.party = cols[7];
    for (size_t k = 0; k < 5; ++k) {
      if (!parse_count(cols[8 + k], &r.credit[k]))
        throw Error(detail::concat(where(), "column ", 9 + k, " (", kCountNames[k], " count) is not a non-negative integer: '",
                                   cols[8 + k], "'"));
    }
    r.context = cols[13];
    records.push_back(std::move(r));
  }
  return records;
}

LiarFields parse_liar_fields(const std::string& spec) {
  if (spec == "statement") return {false, false};
  if (spec == "statement+metadata") return {true, false};
  if (spec == "statement+metadata+credit") return {true, true};
  throw UsageError("unknown LIAR field set '" + spec +
                   "' (expected statement, statement+metadata or statement+metadata+credit)");
}

Dataset make_liar_dataset(const std::vector<LiarRecord>& records, const LiarFields& fields, bool binary,
                          const std::string& name, const Tokenizer& tokenizer) {
  Dataset d;
  d.name = name;
  d.leaking = fields.credit;
  if (binary) {
    d.class_names = {"false", "true"};
  } else {
    d.class_names.assign(kLiarLabels.begin(), kLiarLabels.end());
  }
  d.examples.reserve(records.size());
  for (const auto& r : records) {
    SMT_CHECK(r.label_idx >= 0 && r.label_idx < 6, "LIAR record ", r.id, ": label index ", r.label_idx, " outside [0, 6)");
    std::vector<std::string> f{r.statement};
    if (fields.metadata) {
      f.push_back("subjects: " + r.subjects);
      f.push_back("speaker: " + r.speaker);
      f.push_back("job: " + r.job);
      f.push_back("state: " + r.state);
      f.push_back("party: " + r.party);
      f.push_back("context: " + r.context);
    }
    if (fields.credit) {
      // Stored order: barely-true, false, half-true, mostly-true, pants-on-fire.
      f.push_back(detail::concat("credit: bt=", r.credit[0], " f=", r.credit[1], " ht=", r.credit[2],
                                 " mt=", r.credit[3], " pf=", r.credit[4]));
    }
    Example ex;
    ex.tokens = encode_fields(f, tokenizer);
    ex.label = binary ? (r.label_idx >= 3 ? 1 : 0) : r.label_idx;
    ex.group = 0;
    d.examples.push_back(std::move(ex));
  }
  return d;
}

}  // namespace smt
