// The training loop's guard against numerical blow-ups. A step whose loss or any gradient is NaN
// or Inf is skipped: no AdamW update (parameters and moments unchanged), no checkpoint at that
// step, a warning naming the step and the first non-finite tensor (layout name, or "loss"), and a
// {"event":"skipped_step"} record in metrics.jsonl. After train.max_bad_steps skipped steps in a
// row the run stops with an Error (exit code 1) naming the newest good checkpoint.
//
// Test hook (tests/cli/numeric_guard.sh): SMT_TEST_INJECT_NAN_AT_STEP=A (one step), A-B or A-
// (from A on) writes a NaN into the gradient of tensor SMT_TEST_INJECT_NAN_TENSOR (a layout name;
// default the first tensor; "loss" makes the loss NaN instead) at those steps. Never set outside tests.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/param_layout.h"

namespace smt {

class NumericGuard {
 public:
  // metrics_path "": no skipped_step records (ranks other than 0).
  NumericGuard(int64_t max_bad_steps, std::string checkpoint_dir, std::string metrics_path);

  // Test hook: the gradient element (offset into the layout) that gets the injected NaN at `step`
  // (after the backward, before gradient_norm), or -1 for none.
  int64_t injection_offset(int64_t step, const ParamLayout& layout) const;
  // Whether step `step` must be skipped, given its loss and the global gradient norm from
  // gradient_norm() (NaN when the loss was not finite and no backward ran). Both are the same on
  // every rank (the loss and the norm are reduced over all ranks, and NaN survives the sums), so
  // every rank decides alike without a collective. The gradients are scanned for the tensor to
  // name only when the norm is not finite. Handles the warning, the metrics record and the stop
  // (throws Error). first_non_finite_gradient() names the first bad gradient tensor this rank holds
  // ("" if none); it is called only when grad_norm is not finite.
  bool skip_step(int64_t step, double loss, double grad_norm,
                 const std::function<std::string()>& first_non_finite_gradient);
  // For the loss: applies the test hook's "loss" injection.
  double hook_loss(int64_t step, double loss) const;

 private:
  bool hook_active(int64_t step) const;
  int64_t max_bad_steps_;
  std::string checkpoint_dir_, metrics_path_;
  int64_t bad_in_a_row_ = 0, first_bad_step_ = 0;
  int64_t hook_from_ = 0, hook_to_ = -1;  // inclusive; hook_to_ < hook_from_: off
  std::string hook_tensor_;
};

}  // namespace smt
