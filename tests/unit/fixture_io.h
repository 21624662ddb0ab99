// Reader for the parity fixtures written by tests/torch_twin/make_fixture.py (format documented there):
// "SMTFIX01", then records (uint32 name_len, name, uint32 dtype 0=f64 1=i64 2=utf-8, uint32 ndim,
// int64 dims[ndim], data) until EOF, little-endian. Throws std::runtime_error on any malformed file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace smt::test {

struct FixtureTensor {
  enum DType : int { kFloat64 = 0, kInt64 = 1, kString = 2 };
  std::string name;
  int dtype = kFloat64;
  std::vector<int64_t> dims;  // [ndim]
  std::vector<double> f64;    // [numel] when dtype == kFloat64
  std::vector<int64_t> i64;   // [numel] when dtype == kInt64
  std::string str;            // when dtype == kString (dims = {byte length})

  int64_t numel() const;
};

// All records of the file, by name (names are unique in a valid file).
std::map<std::string, FixtureTensor> read_fixture(const std::string& path);

// The record `name`, or std::runtime_error naming the file's missing record.
const FixtureTensor& fixture_at(const std::map<std::string, FixtureTensor>& fixture, const std::string& name);

}  // namespace smt::test
