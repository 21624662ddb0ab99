// smt::Error: the one exception type of the project. It carries a message with context
// and an exit code class (usage/config errors exit 2, runtime failures exit 1).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace smt {

enum class ErrorKind { kRuntime = 1, kUsage = 2 };

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, ErrorKind kind = ErrorKind::kRuntime)
      : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

// Usage/config error (exit code 2).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(msg, ErrorKind::kUsage) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace smt

// SMT_CHECK(cond, parts...): throw smt::Error("parts...") when cond is false.
#define SMT_CHECK(cond, ...)                                         \
  do {                                                               \
    if (!(cond)) throw ::smt::Error(::smt::detail::concat(__VA_ARGS__)); \
  } while (0)
// SMT_USAGE_CHECK: same, but a usage/config error (exit code 2).
#define SMT_USAGE_CHECK(cond, ...)                                        \
  do {                                                                    \
    if (!(cond)) throw ::smt::UsageError(::smt::detail::concat(__VA_ARGS__)); \
  } while (0)
