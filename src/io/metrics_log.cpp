// Cutting metrics.jsonl back to a checkpoint's step (see metrics_log.h).
#include "io/metrics_log.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/error.h"

namespace smt {

int64_t truncate_metrics_after(const std::string& path, int64_t last_step) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return 0;
  std::ifstream in(path, std::ios::binary);
  SMT_CHECK(in.good(), "cannot read ", path, " to cut it back to step ", last_step, ": ", std::strerror(errno));
  std::stringstream whole;
  whole << in.rdbuf();
  const std::string text = whole.str();
  static const std::regex step_re(R"re("step"\s*:\s*(-?[0-9]+))re");
  std::string kept;
  int64_t dropped = 0;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t nl = text.find('\n', begin);
    if (nl == std::string::npos) {  // an incomplete last line: a write cut short
      ++dropped;
      break;
    }
    const std::string line = text.substr(begin, nl - begin);
    begin = nl + 1;
    if (line.empty()) continue;
    std::smatch m;
    const bool complete = line.front() == '{' && line.back() == '}';
    int64_t step = 0;
    const bool has_step = complete && std::regex_search(line, m, step_re) &&
                          std::from_chars(line.data() + m.position(1), line.data() + m.position(1) + m.length(1), step)
                                  .ec == std::errc();
    if (has_step && step <= last_step) {
      kept += line;
      kept += '\n';
    } else {
      ++dropped;
    }
  }
  if (dropped == 0) return 0;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << kept;
    out.flush();
    if (!out.good()) {
      std::filesystem::remove(tmp, ec);
      throw Error(detail::concat("cannot rewrite ", path, " (writing ", tmp, " failed)"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::filesystem::remove(tmp, ec);
    throw Error(detail::concat("cannot rewrite ", path, ": rename from ", tmp, " failed: ", std::strerror(e)));
  }
  return dropped;
}

}  // namespace smt
