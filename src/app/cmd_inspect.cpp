// `smt inspect FILE [--json]`: what a checkpoint holds: config, step, tokens seen, every tensor
// (name, shape, dtype, norm) and a per-layer summary of the expert weights.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "app/commands_io.h"
#include "app/cli.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json.h"

namespace po = boost::program_options;

namespace smt {

namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

std::string inspect_json(const std::string& path, const CheckpointInfo& info) {
  JsonObject o;
  o.add("file", path).add("format_version", info.format_version).add("created_by", info.created_by)
      .add("step", info.state.step).add("tokens_seen", info.state.tokens_seen)
      .add("loader_epoch", static_cast<int64_t>(info.state.cursor.epoch))
      .add("loader_position", static_cast<int64_t>(info.state.cursor.position))
      .add("data_seed", static_cast<int64_t>(info.state.data_seed))  // seeds are < 2^63 in practice
      .add("config", info.config_ini);
  std::vector<std::string> rngs;
  for (const auto& r : info.state.rngs) {
    JsonObject j;
    j.add("name", r.name).add("seed", std::to_string(r.seed)).add("stream", std::to_string(r.stream))
        .add("position", std::to_string(r.position));
    rngs.push_back(j.str());
  }
  o.add_raw("rng", json_array(rngs));
  std::vector<std::string> tensors;
  for (const auto& t : info.tensors) {
    JsonObject j;
    j.add("name", t.name).add("shape", t.shape).add("dtype", t.dtype).add("norm", t.norm);
    tensors.push_back(j.str());
  }
  o.add_raw("tensors", json_array(tensors));
  std::vector<std::string> experts;
  for (const auto& l : info.experts) {
    JsonObject j;
    j.add("layer", l.layer).add("moe", l.is_moe).add("w1_norm", l.w1_norm).add("w2_norm", l.w2_norm);
    experts.push_back(j.str());
  }
  o.add_raw("experts", json_array(experts));
  o.add("last_metrics", info.state.last_metrics_json);  // the JSON record, as a string
  return o.str();
}

void print_text(const std::string& path, const CheckpointInfo& info) {
  std::printf("checkpoint %s\n", path.c_str());
  std::printf("format version %d, written by %s\n", info.format_version,
              info.created_by.empty() ? "(unknown)" : info.created_by.c_str());
  std::printf("step %lld, tokens seen %lld, data cursor epoch %llu position %llu, data seed %llu\n",
              static_cast<long long>(info.state.step), static_cast<long long>(info.state.tokens_seen),
              static_cast<unsigned long long>(info.state.cursor.epoch),
              static_cast<unsigned long long>(info.state.cursor.position),
              static_cast<unsigned long long>(info.state.data_seed));
  for (const auto& r : info.state.rngs)
    std::printf("rng %s: seed %llu stream %llu position %llu\n", r.name.c_str(),
                static_cast<unsigned long long>(r.seed), static_cast<unsigned long long>(r.stream),
                static_cast<unsigned long long>(r.position));
  std::printf("\nconfig:\n");
  std::istringstream is(info.config_ini);
  for (std::string line; std::getline(is, line);)
    if (!line.empty()) std::printf("  %s\n", line.c_str());

  size_t wname = 6, wshape = 5;
  int64_t total = 0;
  for (const auto& t : info.tensors) {
    wname = std::max(wname, t.name.size());
    wshape = std::max(wshape, shape_text(t.shape).size());
  }
  std::printf("\ntensors (%zu):\n  %-*s  %-*s  %-7s  %s\n", info.tensors.size(), static_cast<int>(wname), "name",
              static_cast<int>(wshape), "shape", "dtype", "norm");
  for (const auto& t : info.tensors) {
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    if (t.name.rfind("params/", 0) == 0) total += n;
    std::printf("  %-*s  %-*s  %-7s  %.6g\n", static_cast<int>(wname), t.name.c_str(), static_cast<int>(wshape),
                shape_text(t.shape).c_str(), t.dtype.c_str(), t.norm);
  }
  std::printf("parameters: %lld\n", static_cast<long long>(total));

  if (!info.experts.empty()) {
    std::printf("\nexpert weights (L2 norm of w1 / w2 per expert):\n");
    for (const auto& l : info.experts) {
      std::printf("  layer %d (%s, %zu expert%s):", l.layer, l.is_moe ? "MoE" : "dense FFN", l.w1_norm.size(),
                  l.w1_norm.size() == 1 ? "" : "s");
      for (size_t e = 0; e < l.w1_norm.size(); ++e)
        std::printf("  e%zu %.4g/%.4g", e, l.w1_norm[e], e < l.w2_norm.size() ? l.w2_norm[e] : 0.0);
      std::printf("\n");
    }
  }
  if (!info.state.last_metrics_json.empty()) std::printf("\nlast metrics: %s\n", info.state.last_metrics_json.c_str());
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  std::string file;
  bool json = false;
  po::options_description desc("usage: smt inspect CHECKPOINT.h5 [--json]\n\nOptions");
  desc.add_options()("help,h", "print this help")("json", po::bool_switch(&json), "print one JSON object")(
      "file", po::value(&file), "checkpoint file (positional)");
  po::positional_options_description pos;
  pos.add("file", 1);
  if (!parse_command_options(argc, argv, desc, &pos)) return 0;
  SMT_USAGE_CHECK(!file.empty(), "smt inspect needs a checkpoint file: smt inspect FILE [--json]");
  const CheckpointInfo info = read_checkpoint_info(file);
  if (json) std::printf("%s\n", inspect_json(file, info).c_str());
  else print_text(file, info);
  std::fflush(stdout);
  return 0;
}

}  // namespace smt
