// Skipping non-finite steps (see numeric_guard.h).
#include "app/numeric_guard.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>

#include "core/error.h"
#include "core/log.h"
#include "io/checkpoint.h"
#include "io/json.h"

namespace smt {

NumericGuard::NumericGuard(int64_t max_bad_steps, std::string checkpoint_dir, std::string metrics_path)
    : max_bad_steps_(max_bad_steps), checkpoint_dir_(std::move(checkpoint_dir)), metrics_path_(std::move(metrics_path)) {
  if (const char* v = std::getenv("SMT_TEST_INJECT_NAN_AT_STEP"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    hook_from_ = std::strtoll(v, &end, 10);
    hook_to_ = hook_from_;
    if (end != nullptr && *end == '-') hook_to_ = end[1] == '\0' ? std::numeric_limits<int64_t>::max() : std::strtoll(end + 1, nullptr, 10);
    const char* t = std::getenv("SMT_TEST_INJECT_NAN_TENSOR");
    hook_tensor_ = t != nullptr ? t : "";
  }
}

bool NumericGuard::hook_active(int64_t step) const { return step >= hook_from_ && step <= hook_to_; }

double NumericGuard::hook_loss(int64_t step, double loss) const {
  return hook_active(step) && hook_tensor_ == "loss" ? std::numeric_limits<double>::quiet_NaN() : loss;
}

int64_t NumericGuard::injection_offset(int64_t step, const ParamLayout& layout) const {
  if (!hook_active(step) || hook_tensor_ == "loss") return -1;
  const auto& spec = hook_tensor_.empty() ? layout.tensors().front() : layout.at(hook_tensor_);
  return spec.offset + spec.numel / 2;
}

bool NumericGuard::skip_step(int64_t step, double loss, double grad_norm,
                             const std::function<std::string()>& first_non_finite_gradient) {
  std::string bad;
  if (!std::isfinite(loss)) {
    bad = "loss";
  } else if (!std::isfinite(grad_norm)) {
    bad = first_non_finite_gradient();
    if (bad.empty()) bad = "a tensor held by another rank";  // expert slices this rank does not hold
  }
  if (bad.empty()) {
    bad_in_a_row_ = 0;
    return false;
  }
  if (bad_in_a_row_++ == 0) first_bad_step_ = step;
  const std::string what = bad == "loss" ? "the loss" : "the gradient of " + bad;
  log_warn(detail::concat("step ", step, ": ", what, " is not finite (NaN or Inf); update skipped (", bad_in_a_row_,
                          " in a row, train.max_bad_steps = ", max_bad_steps_, ")"));
  JsonObject rec;
  rec.add("event", "skipped_step").add("step", step).add("non_finite", bad).add("bad_in_a_row", bad_in_a_row_);
  if (!metrics_path_.empty()) append_jsonl(metrics_path_, rec);
  if (bad_in_a_row_ >= max_bad_steps_) {
    const std::string good = find_latest_checkpoint(checkpoint_dir_);
    throw Error(detail::concat("stopping: ", bad_in_a_row_, " steps in a row (", first_bad_step_, "-", step,
                               ") had a non-finite loss or gradient (train.max_bad_steps = ", max_bad_steps_,
                               "); last good checkpoint: ", good.empty() ? "none written yet" : good));
  }
  return true;
}

}  // namespace smt
