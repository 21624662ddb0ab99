// libFuzzer target: the LIAR reader (read_liar_tsv) on arbitrary bytes, then the dataset and a
// batch built from whatever it accepted. Any exception other than smt::Error, any crash or
// sanitizer report is a bug. Build and run: scripts/fuzz.sh.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "data/batch.h"
#include "data/liar.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/smt-fuzz-liar-" + std::to_string(::getpid()) + ".tsv";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const auto records = smt::read_liar_tsv(path);
    for (const char* spec : {"statement", "statement+metadata", "statement+metadata+credit"}) {
      for (bool binary : {false, true}) {
        const smt::Dataset d = smt::make_liar_dataset(records, smt::parse_liar_fields(spec), binary, "fuzz");
        if (d.examples.empty()) continue;
        smt::DataLoader loader(d, 1, 2, 32);
        const smt::Batch b = loader.next();
        if (b.tokens.size() != 64) __builtin_trap();
      }
    }
  } catch (const smt::Error&) {
    // A clear rejection: fine.
  }
  return 0;
}
