// Config loading from file + command line, and the progress display.
#include "app/cli.h"

#include <unistd.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"

namespace po = boost::program_options;

namespace smt {

bool parse_run_config(int argc, char** argv, const std::string& command, const std::string& usage,
                      RunConfig& config, const po::options_description* extra) {
  std::string config_file;
  po::options_description generic("Options");
  generic.add_options()("help,h", "print this help")("config", po::value(&config_file),
                                                     "INI file with the configuration");
  po::options_description keys = run_config_options(config);
  po::options_description all;
  all.add(generic);
  if (extra) all.add(*extra);
  all.add(keys);
  po::variables_map vm;
  for (int i = 1; i < argc; ++i) refuse_boost_placeholders(argv[i], "command-line argument '" + std::string(argv[i]) + "'");
  try {
    po::store(po::command_line_parser(argc, argv).options(all).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: smt " << command << " " << usage << "\n\n" << all << "\n";
      return false;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::error_code ec;  // a folder, FIFO or device (/dev/zero) is not a config file
      SMT_USAGE_CHECK(!std::filesystem::exists(path, ec) || std::filesystem::is_regular_file(path, ec), "config file ",
                      path, " is not a regular file");
      std::ifstream file(path);
      SMT_USAGE_CHECK(file.good(), "cannot read config file ", path);
      std::stringstream text;
      text << file.rdbuf();
      refuse_boost_placeholders(text.str(), "config file " + path);
      std::istringstream f(text.str());
      try {
        const po::parsed_options parsed = po::parse_config_file(f, keys, false);
        for (const po::option& o : parsed.options)  // per-invocation flags: a file must not delete or resume silently
          SMT_USAGE_CHECK(!RunConfig::is_invocation_flag(o.string_key), path, ": '", o.string_key,
                          "' is a command-line flag (--", o.string_key, "), not a config key");
        po::store(parsed, vm);
      } catch (const po::error& e) {
        throw UsageError(path + ": " + e.what());
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  config.validate();
  return true;
}

bool bench_device_is_cuda(const std::string& device) {
  SMT_USAGE_CHECK(device == "cuda" || device == "cpu", "--device must be cpu or cuda, got '", device, "'");
#ifndef SMT_CUDA
  SMT_USAGE_CHECK(device == "cpu", "--device cuda: this smt was built without CUDA (use the cuda preset)");
#endif
  return device == "cuda";
}

bool parse_command_options(int argc, char** argv, const po::options_description& desc,
                           const po::positional_options_description* positional) {
  po::variables_map vm;
  for (int i = 1; i < argc; ++i) refuse_boost_placeholders(argv[i], "command-line argument '" + std::string(argv[i]) + "'");
  try {
    po::command_line_parser parser(argc, argv);
    parser.options(desc);
    if (positional) parser.positional(*positional);
    po::store(parser.run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return false;
  }
  return true;
}

Progress::Progress(int64_t total) : total_(total), tty_(isatty(fileno(stdout)) != 0) {}

void Progress::update(int64_t done, const std::string& info, bool force_line) {
  if (log_rank() != 0) return;
  if (tty_) {
    const int width = 30;
    const int filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::fprintf(stdout, "\r[%s] %s\x1b[K", bar.c_str(), info.c_str());
    std::fflush(stdout);
    dirty_ = true;
  } else if (force_line) {
    std::fprintf(stdout, "%s\n", info.c_str());
    std::fflush(stdout);
  }
}

void Progress::finish() {
  if (tty_ && dirty_) std::fprintf(stdout, "\n");
  dirty_ = false;
}

}  // namespace smt
