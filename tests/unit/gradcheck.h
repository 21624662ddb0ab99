// Test helper: central finite differences of a scalar function of a double vector, gradient
// comparison with a stated relative error, and seeded random inputs that are never zero.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace smt::gradcheck {

// g[i] = (f(x + h e_i) - f(x - h e_i)) / (2h). f takes const std::vector<double>&.
template <typename F>
std::vector<double> numerical_gradient(F&& f, std::vector<double> x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i];
    x[i] = xi + h;
    const double fp = f(x);
    x[i] = xi - h;
    const double fm = f(x);
    x[i] = xi;
    g[i] = (fp - fm) / (2.0 * h);
  }
  return g;
}

struct Comparison {
  double max_rel_error = 0.0;  // max_i |a_i - n_i| / max(|a_i|, |n_i|, floor)
  int64_t worst_index = -1;
  double analytic = 0.0, numeric = 0.0;
  double scale = 0.0;  // max_i max(|a_i|, |n_i|)
  std::string describe() const {
    std::ostringstream os;
    os << "max rel error " << max_rel_error << " at index " << worst_index << " (analytic " << analytic
       << ", numeric " << numeric << ", gradient scale " << scale << ")";
    return os.str();
  }
};

// Relative error per element, with the denominator floored at floor_fraction * (largest gradient
// entry; default 1%) so that entries near zero are judged against the gradient's scale rather than
// themselves (central differences carry an absolute rounding error ~ eps * sum|terms of f| / h).
inline Comparison compare(const std::vector<double>& analytic, const std::vector<double>& numeric,
                          double floor_fraction = 1e-2) {
  Comparison c;
  if (analytic.size() != numeric.size()) {
    c.max_rel_error = INFINITY;
    return c;
  }
  for (size_t i = 0; i < analytic.size(); ++i)
    c.scale = std::max({c.scale, std::fabs(analytic[i]), std::fabs(numeric[i])});
  const double floor = std::max(floor_fraction * c.scale, 1e-300);
  for (size_t i = 0; i < analytic.size(); ++i) {
    const double denom = std::max({std::fabs(analytic[i]), std::fabs(numeric[i]), floor});
    const double err = std::fabs(analytic[i] - numeric[i]) / denom;
    if (!(err <= c.max_rel_error)) {  // also catches NaN
      c.max_rel_error = std::isnan(err) ? INFINITY : err;
      c.worst_index = static_cast<int64_t>(i);
      c.analytic = analytic[i];
      c.numeric = numeric[i];
      if (std::isnan(err)) break;
    }
  }
  return c;
}

// Uniform in [lo, hi] but bounded away from zero: |value| >= min_abs (sign random).
inline std::vector<double> random_vector(size_t n, uint64_t seed, double max_abs = 1.0, double min_abs = 0.05) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> mag(min_abs, max_abs);
  std::bernoulli_distribution sign(0.5);
  std::vector<double> v(n);
  for (auto& x : v) x = sign(gen) ? mag(gen) : -mag(gen);
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
std::vector<T> difference(const std::vector<T>& after, const std::vector<T>& before) {
  std::vector<T> d(after.size());
  for (size_t i = 0; i < after.size(); ++i) d[i] = after[i] - before[i];
  return d;
}

}  // namespace smt::gradcheck
