// Dataset helpers: label counts and the majority-class baseline of one data set.
// Ties between equally frequent labels go to the lowest index.
#include "data/dataset.h"

#include "core/error.h"

namespace smt {

std::vector<int64_t> Dataset::label_counts() const {
  std::vector<int64_t> counts(class_names.size(), 0);
  for (const auto& ex : examples) {
    SMT_CHECK(ex.label >= 0 && ex.label < num_classes(), "data set ", name, ": label ", ex.label,
              " outside [0, ", num_classes(), ")");
    ++counts[static_cast<size_t>(ex.label)];
  }
  return counts;
}

int32_t Dataset::majority_label() const {
  const auto counts = label_counts();
  int32_t best = 0;
  for (size_t c = 1; c < counts.size(); ++c)
    if (counts[c] > counts[static_cast<size_t>(best)]) best = static_cast<int32_t>(c);
  return best;
}

double Dataset::majority_accuracy() const {
  if (examples.empty()) return 0.0;
  const auto counts = label_counts();
  return static_cast<double>(counts[static_cast<size_t>(majority_label())]) / static_cast<double>(examples.size());
}

}  // namespace smt
