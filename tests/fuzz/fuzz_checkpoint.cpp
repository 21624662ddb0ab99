// libFuzzer target: the checkpoint loader on arbitrary bytes written as an .h5 file: the
// structural check with full data verification, the `smt inspect` reader, and for files that pass,
// load_checkpoint into a model built from the stored configuration (when it is small). Any
// exception other than smt::Error, crash or sanitizer report is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "model/memory_estimate.h"
#include "model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/smt-fuzz-checkpoint-" + std::to_string(::getpid()) + ".h5";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    (void)smt::read_checkpoint_info(path);
  } catch (const smt::Error&) {
  }
  try {
    if (!smt::checkpoint_structure_problem(path, true).empty()) return 0;
    smt::RunConfig cfg = smt::CheckpointReader(path).config();
    cfg.validate();  // as `smt train` validates its own configuration before loading
    if (cfg.model.num_classes <= 0 || smt::estimate_memory(cfg).params > 1e6) return 0;
    smt::Model model(cfg.model, cfg.train.aux_loss_coeff, cfg.train.z_loss_coeff, cfg.seed);
    smt::TrainState state;
    std::vector<std::string> changed;
    smt::load_checkpoint(path, model, cfg, state, &changed);
  } catch (const smt::Error&) {
  }
  return 0;
}
