// Shared command-line plumbing of the smt subcommands: config loading (file + overrides),
// the help text, and the progress display.
#pragma once
#include <string>

#include "model/config.h"

namespace boost::program_options {
class options_description;
class positional_options_description;
}

namespace smt {

// Parses `--config FILE` and `--section.key=value` overrides (command line wins over the file).
// Returns false if --help was given (help printed). Throws UsageError on bad input.
// `extra` (nullable) adds command-specific options.
bool parse_run_config(int argc, char** argv, const std::string& command, const std::string& usage,
                      RunConfig& config, const boost::program_options::options_description* extra = nullptr);

// Parses argv against `desc` (and `positional`, nullable) into the bound variables; Boost
// errors become UsageError. Returns false (after printing `desc`) when --help was given.
bool parse_command_options(int argc, char** argv, const boost::program_options::options_description& desc,
                           const boost::program_options::positional_options_description* positional = nullptr);

// A bench command's --device: true for cuda, false for cpu; UsageError for anything else and for cuda
// in a build without CUDA.
bool bench_device_is_cuda(const std::string& device);

// One-line progress: a bar on a terminal (rewritten in place), plain lines otherwise.
class Progress {
 public:
  explicit Progress(int64_t total);
  void update(int64_t done, const std::string& info, bool force_line = false);
  void finish();

 private:
  int64_t total_;
  bool tty_;
  bool dirty_ = false;
};

int cmd_train(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_bench_compare(int argc, char** argv);  // smt bench compare (cmd_bench_compare.cpp)
int cmd_bench_exchange(int argc, char** argv);   // smt bench exchange (src/app/cmd_bench_exchange.cpp)
int cmd_bench_attention(int argc, char** argv);  // smt bench attention (src/app/cmd_bench_attention.cpp)
int cmd_bench_moe(int argc, char** argv);        // smt bench moe (src/app/cmd_bench_moe.cpp)

}  // namespace smt
