// Minimal JSON output: an object builder that appends "key": value pairs in insertion order.
// Non-finite doubles are written as null (JSON has no NaN/Infinity).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace smt {

std::string json_escape(const std::string& s);
std::string json_number(double v);

class JsonObject {
 public:
  JsonObject& add(const std::string& key, double v);
  JsonObject& add(const std::string& key, int64_t v);
  JsonObject& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  JsonObject& add(const std::string& key, bool v);
  JsonObject& add(const std::string& key, const std::string& v);
  JsonObject& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  JsonObject& add(const std::string& key, const std::vector<int64_t>& v);
  JsonObject& add(const std::string& key, const std::vector<double>& v);
  JsonObject& add(const std::string& key, const JsonObject& v);
  JsonObject& add_raw(const std::string& key, const std::string& json);  // json must be valid
  JsonObject& merge(const JsonObject& other);  // append other's pairs
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

std::string json_array(const std::vector<std::string>& raw_items);

// Appends one line to a JSONL file (opened in append mode); throws Error on failure.
void append_jsonl(const std::string& path, const JsonObject& record);

}  // namespace smt
