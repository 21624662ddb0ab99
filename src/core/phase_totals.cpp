#include "core/phase_totals.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "io/json.h"

namespace smt {

void PhaseTotals::add(std::string_view name, double ms) {
  SMT_CHECK(std::isfinite(ms) && ms >= 0, "phase ", std::string(name), ": interval of ", ms, " ms");
  for (Phase& p : phases_) {
    if (p.name == name) {
      p.total_ms += ms;
      ++p.intervals;
      return;
    }
  }
  phases_.push_back({std::string(name), ms, 1});
}

double PhaseTotals::step_ms() const {
  if (steps_ == 0) return 0;
  double total = 0;
  for (const Phase& p : phases_) total += p.total_ms;
  return total / static_cast<double>(steps_);
}

std::string PhaseTotals::json() const {
  JsonObject o;
  if (steps_ > 0)
    for (const Phase& p : phases_) o.add(p.name, p.total_ms / static_cast<double>(steps_));
  return o.str();
}

std::string PhaseTotals::table() const {
  std::string out;
  char line[160];
  const double step = step_ms();
  for (const Phase& p : phases_) {
    const double ms = steps_ > 0 ? p.total_ms / static_cast<double>(steps_) : 0;
    std::snprintf(line, sizeof line, "  %-26s %9.3f ms %6.1f%%\n", p.name.c_str(), ms, step > 0 ? 100 * ms / step : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof line, "  %-26s %9.3f ms over %lld steps\n", "step", step, static_cast<long long>(steps_));
  return out + line;
}

}  // namespace smt
