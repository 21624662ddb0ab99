// `smt export FILE --format safetensors --out OUT.safetensors`: the parameters of a checkpoint as a
// safetensors file (8-byte little-endian header length, JSON header, raw little-endian F32 data).
#include <fcntl.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "app/commands_io.h"
#include "app/cli.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json.h"

namespace po = boost::program_options;

namespace smt {

namespace {

class OutFile {
 public:
  OutFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd_ < 0) throw Error(detail::concat("cannot create ", path_, ": ", std::strerror(errno)));
  }
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw Error(detail::concat("cannot write ", path_, ": ", std::strerror(errno)));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  void finish() {
    if (::fsync(fd_) != 0) throw Error(detail::concat("cannot write ", path_, ": fsync: ", std::strerror(errno)));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Error(detail::concat("cannot write ", path_, ": close: ", std::strerror(errno)));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace

int export_safetensors(const std::string& checkpoint_path, const std::string& out_path) {
  CheckpointReader r(checkpoint_path);
  const TrainState state = r.state();
  struct Item {
    std::string dataset, name;
    std::vector<int64_t> shape;
    int64_t numel;
  };
  std::vector<Item> items;
  for (const auto& ds : r.dataset_names()) {
    if (ds.rfind("params/", 0) != 0) continue;
    Item it{ds, ds.substr(7), r.dataset_shape(ds), 1};
    for (int64_t s : it.shape) it.numel *= s;
    items.push_back(std::move(it));
  }
  SMT_CHECK(!items.empty(), "checkpoint ", checkpoint_path, " has no parameters to export");

  JsonObject meta;
  meta.add("format", "pt")
      .add("source", "smt checkpoint")
      .add("config", r.config_ini())
      .add("step", std::to_string(state.step))
      .add("tokens_seen", std::to_string(state.tokens_seen))
      .add("format_version", std::to_string(r.format_version()));
  JsonObject header;
  header.add("__metadata__", meta);
  int64_t offset = 0;
  for (const auto& it : items) {
    const int64_t bytes = it.numel * static_cast<int64_t>(sizeof(float));
    std::string entry = "{\"dtype\": \"F32\", \"shape\": [";
    for (size_t i = 0; i < it.shape.size(); ++i) {
      if (i) entry += ", ";
      entry += std::to_string(it.shape[i]);
    }
    entry += "], \"data_offsets\": [";
    entry += std::to_string(offset);
    entry += ", ";
    entry += std::to_string(offset + bytes);
    entry += "]}";
    header.add_raw(it.name, entry);
    offset += bytes;
  }
  std::string text = header.str();
  while (text.size() % 8 != 0) text += ' ';  // data starts 8-byte aligned (as the reference writer pads)

  const std::string tmp = out_path + ".tmp-" + std::to_string(::getpid());
  try {
    OutFile f(tmp);
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    f.write(len, 8);
    f.write(text.data(), text.size());
    std::vector<float> buf;
    for (const auto& it : items) {
      buf.resize(static_cast<size_t>(it.numel));
      if (it.numel > 0) r.read(it.dataset, buf.data());
      f.write(buf.data(), buf.size() * sizeof(float));  // little-endian host (checked in checkpoint.cpp)
    }
    f.finish();
    if (::rename(tmp.c_str(), out_path.c_str()) != 0)
      throw Error(detail::concat("cannot write ", out_path, ": rename from ", tmp, " failed: ", std::strerror(errno)));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  return static_cast<int>(items.size());
}

int cmd_export(int argc, char** argv) {
  std::string file, format = "safetensors", out;
  po::options_description desc(
      "usage: smt export CHECKPOINT.h5 --format safetensors --out OUT.safetensors\n\n"
      "Writes the parameters (fp32, global shapes; no optimizer state) with the config in __metadata__.\n\nOptions");
  desc.add_options()("help,h", "print this help")("format", po::value(&format)->default_value(format),
                                                  "output format: safetensors")(
      "out", po::value(&out), "output file")("file", po::value(&file), "checkpoint file (positional)");
  po::positional_options_description pos;
  pos.add("file", 1);
  if (!parse_command_options(argc, argv, desc, &pos)) return 0;
  SMT_USAGE_CHECK(!file.empty(), "smt export needs a checkpoint file: smt export FILE --format safetensors --out OUT");
  SMT_USAGE_CHECK(format == "safetensors", "--format must be safetensors, got '", format, "'");
  SMT_USAGE_CHECK(!out.empty(), "smt export needs --out OUT.safetensors");
  const int n = export_safetensors(file, out);
  std::cout << "wrote " << n << " tensors to " << out << "\n";
  return 0;
}

}  // namespace smt
