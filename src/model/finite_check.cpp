// First non-finite tensor of an arena (see finite_check.h).
#include "model/finite_check.h"

#include <cmath>

namespace smt {

std::string first_non_finite_tensor(const ParamLayout& layout, const float* arena) {
  for (const auto& t : layout.tensors()) {
    const float* p = arena + t.offset;
    // No early exit inside a tensor: a branch-free loop the compiler vectorises.
    bool bad = false;
    for (int64_t i = 0; i < t.numel; ++i) bad |= !std::isfinite(p[i]);
    if (bad) return t.name;
  }
  return "";
}

}  // namespace smt
