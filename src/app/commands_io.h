// Checkpoint subcommands: `smt inspect FILE [--json]` and
// `smt export FILE --format safetensors --out OUT.safetensors` (src/app/cmd_inspect.cpp, cmd_export.cpp).
#pragma once
#include <string>

namespace smt {

int cmd_inspect(int argc, char** argv);
int cmd_export(int argc, char** argv);

// Writes the parameters of the checkpoint `checkpoint_path` as a safetensors file (F32, global
// shapes, layout order; __metadata__ holds config, step, tokens_seen, format_version), atomically.
// Returns the number of tensors written.
int export_safetensors(const std::string& checkpoint_path, const std::string& out_path);

}  // namespace smt
