// Logging: only rank 0 prints (set_log_rank), info to stdout, warnings to stderr.
#pragma once
#include <string>

namespace smt {

void set_log_rank(int rank);
int log_rank();
void log_info(const std::string& msg);
void log_warn(const std::string& msg);

}  // namespace smt
