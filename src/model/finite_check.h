// Non-finite detection over the parameter layout: which tensor (by its layout name) holds the
// first NaN/Inf of an arena (gradients, parameters, moments).
#pragma once
#include <string>

#include "model/param_layout.h"

namespace smt {

// The name of the first tensor of `layout` (in layout order) with a NaN or Inf among its values in
// `arena` (laid out as layout.total() floats); "" if all are finite.
std::string first_non_finite_tensor(const ParamLayout& layout, const float* arena);

}  // namespace smt
