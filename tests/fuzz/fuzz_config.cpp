// libFuzzer target: the configuration parser. The input is an INI file, optionally followed by a
// line "--" and command-line overrides, one per line; it goes through parse_run_config exactly as
// `smt train --config FILE ARGS...` would. For every accepted configuration: to_ini() must read
// back to the same configuration, and the memory estimate's parameter count must equal the
// parameter layout's. Any exception other than smt::Error, crash or sanitizer report is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "model/config.h"
#include "model/memory_estimate.h"
#include "model/param_layout.h"

namespace {
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_config: property violated: %s\n", what);
    __builtin_trap();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::string ini = input, rest;
  if (const size_t sep = input.find("\n--\n"); sep != std::string::npos) {
    ini = input.substr(0, sep + 1);
    rest = input.substr(sep + 4);
  }
  static const std::string path = "/tmp/smt-fuzz-config-" + std::to_string(::getpid()) + ".ini";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(ini.data(), 1, ini.size(), f);
  std::fclose(f);
  std::vector<std::string> args = {"train", "--config", path};
  size_t start = 0;
  while (start < rest.size() && args.size() < 64) {
    size_t nl = rest.find('\n', start);
    if (nl == std::string::npos) nl = rest.size();
    const std::string a = rest.substr(start, nl - start);
    if (a != "--help" && a != "-h") args.push_back(a);  // help prints and returns: nothing to check
    start = nl + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  try {
    smt::RunConfig cfg;
    if (!smt::parse_run_config(static_cast<int>(args.size()), argv.data(), "train", "", cfg)) return 0;
    const std::string text = cfg.to_ini();
    const smt::RunConfig again = smt::load_run_config_text(text);
    require(again.to_ini() == text, "to_ini() does not read back to the same configuration");
    if (cfg.model.num_classes > 0) {  // 0: the class count comes from the data, the estimate assumes 6
      smt::ModelConfig m = cfg.model;
      const smt::ParamLayout layout(m);
      double numel = 0;
      for (const auto& t : layout.tensors()) numel += static_cast<double>(t.numel);
      require(numel == smt::estimate_memory(cfg).params, "memory estimate's parameter count != layout's");
    }
    (void)cfg.attention_pattern();
  } catch (const smt::Error&) {
    // A clear rejection: fine.
  }
  return 0;
}
