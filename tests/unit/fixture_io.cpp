// Reader for the parity fixtures (format: tests/torch_twin/make_fixture.py). Validates magic, dtypes,
// dims, sizes against the bytes left and unique names; never reads past the end.
#include "fixture_io.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>

namespace smt::test {

static_assert(std::endian::native == std::endian::little, "fixture reader assumes a little-endian host");

int64_t FixtureTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

namespace {

constexpr char kMagic[8] = {'S', 'M', 'T', 'F', 'I', 'X', '0', '1'};
constexpr uint32_t kMaxNameLen = 4096;
constexpr uint32_t kMaxNdim = 16;

class Cursor {
 public:
  Cursor(const std::string& path, const std::string& bytes) : path_(path), bytes_(bytes) {}

  bool at_end() const { return pos_ == bytes_.size(); }
  size_t left() const { return bytes_.size() - pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("fixture " + path_ + ": " + what + " (at byte " + std::to_string(pos_) + ")");
  }

  void read(void* dst, size_t n, const char* what) {
    if (n > left()) fail(std::string("truncated ") + what);
    if (n > 0) std::memcpy(dst, bytes_.data() + pos_, n);  // memcpy with a null dst is UB even for 0 bytes
    pos_ += n;
  }
  uint32_t u32(const char* what) {
    uint32_t v;
    read(&v, sizeof v, what);
    return v;
  }
  int64_t i64(const char* what) {
    int64_t v;
    read(&v, sizeof v, what);
    return v;
  }

 private:
  std::string path_;
  const std::string& bytes_;
  size_t pos_ = 0;
};

}  // namespace

std::map<std::string, FixtureTensor> read_fixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("fixture " + path + ": cannot open");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error("fixture " + path + ": read error");
  Cursor cur(path, bytes);

  char magic[8];
  cur.read(magic, sizeof magic, "magic");
  if (std::memcmp(magic, kMagic, sizeof magic) != 0) cur.fail("bad magic (expected SMTFIX01)");

  std::map<std::string, FixtureTensor> out;
  while (!cur.at_end()) {
    FixtureTensor t;
    const uint32_t name_len = cur.u32("name length");
    if (name_len == 0 || name_len > kMaxNameLen) cur.fail("bad name length " + std::to_string(name_len));
    t.name.resize(name_len);
    cur.read(t.name.data(), name_len, "name");
    const uint32_t dtype = cur.u32("dtype");
    if (dtype > FixtureTensor::kString) cur.fail("record " + t.name + ": unknown dtype " + std::to_string(dtype));
    t.dtype = static_cast<int>(dtype);
    const uint32_t ndim = cur.u32("ndim");
    if (ndim > kMaxNdim) cur.fail("record " + t.name + ": bad ndim " + std::to_string(ndim));
    if (t.dtype == FixtureTensor::kString && ndim != 1) cur.fail("record " + t.name + ": a string needs ndim 1");
    t.dims.resize(ndim);
    const size_t elem = t.dtype == FixtureTensor::kString ? 1 : 8;
    size_t numel = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
      const int64_t d = cur.i64("dims");
      if (d < 0) cur.fail("record " + t.name + ": negative dim");
      t.dims[i] = d;
      if (d != 0 && numel > cur.left() / static_cast<size_t>(d)) cur.fail("record " + t.name + ": dims exceed the file");
      numel *= static_cast<size_t>(d);
    }
    if (numel > cur.left() / elem) cur.fail("record " + t.name + ": truncated data");
    switch (t.dtype) {
      case FixtureTensor::kFloat64:
        t.f64.resize(numel);
        cur.read(t.f64.data(), numel * elem, "data");
        break;
      case FixtureTensor::kInt64:
        t.i64.resize(numel);
        cur.read(t.i64.data(), numel * elem, "data");
        break;
      default:
        t.str.resize(numel);
        cur.read(t.str.data(), numel, "data");
        break;
    }
    std::string name = t.name;
    if (!out.emplace(name, std::move(t)).second) cur.fail("duplicate record " + name);
  }
  return out;
}

const FixtureTensor& fixture_at(const std::map<std::string, FixtureTensor>& fixture, const std::string& name) {
  auto it = fixture.find(name);
  if (it == fixture.end()) throw std::runtime_error("fixture has no record " + name);
  return it->second;
}

}  // namespace smt::test
