// Minimal JSON output (see json.h).
#include "io/json.h"

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace smt {

std::string json_escape(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void JsonObject::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += json_escape(k) + ": ";
}

JsonObject& JsonObject::add(const std::string& k, double v) {
  key(k);
  body_ += json_number(v);
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, int64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, bool v) {
  key(k);
  body_ += v ? "true" : "false";
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += json_escape(v);
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, const std::vector<int64_t>& v) {
  key(k);
  body_ += "[";
  for (size_t i = 0; i < v.size(); ++i) body_ += (i ? ", " : "") + std::to_string(v[i]);
  body_ += "]";
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, const std::vector<double>& v) {
  key(k);
  body_ += "[";
  for (size_t i = 0; i < v.size(); ++i) body_ += (i ? ", " : "") + json_number(v[i]);
  body_ += "]";
  return *this;
}
JsonObject& JsonObject::add(const std::string& k, const JsonObject& v) { return add_raw(k, v.str()); }
JsonObject& JsonObject::add_raw(const std::string& k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}

JsonObject& JsonObject::merge(const JsonObject& other) {
  if (other.body_.empty()) return *this;
  if (!body_.empty()) body_ += ", ";
  body_ += other.body_;
  return *this;
}

std::string json_array(const std::vector<std::string>& raw_items) {
  std::string s = "[";
  for (size_t i = 0; i < raw_items.size(); ++i) s += (i ? ", " : "") + raw_items[i];
  return s + "]";
}

void append_jsonl(const std::string& path, const JsonObject& record) {
  std::ofstream f(path, std::ios::app);
  SMT_CHECK(f.good(), "cannot open ", path, " for appending");
  f << record.str() << "\n";
  f.flush();
  SMT_CHECK(f.good(), "cannot write to ", path);
}

}  // namespace smt
