// Rank-0-only logging.
#include "core/log.h"

#include <cstdio>

namespace smt {

static int g_rank = 0;

void set_log_rank(int rank) { g_rank = rank; }
int log_rank() { return g_rank; }

void log_info(const std::string& msg) {
  if (g_rank != 0) return;
  std::fprintf(stdout, "%s\n", msg.c_str());
  std::fflush(stdout);
}

void log_warn(const std::string& msg) {
  if (g_rank != 0) return;
  std::fprintf(stderr, "warning: %s\n", msg.c_str());
  std::fflush(stderr);
}

}  // namespace smt
