// A labelled, tokenised data set: what the trainer and evaluator consume, whatever the source.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace smt {

struct Example {
  std::vector<int32_t> tokens;  // encoded with specials (BOS ... EOS), not padded
  int32_t label = 0;            // class index in [0, num_classes)
  int32_t group = 0;            // sub-population (synthetic: claim family), for per-group reports
};

struct Dataset {
  std::string name;                      // e.g. "synthetic:train", "liar:valid"
  std::vector<Example> examples;
  std::vector<std::string> class_names;  // [num_classes]
  std::vector<std::string> group_names;  // [num_groups] (empty = one group)
  bool leaking = false;                  // features include information derived from the label
  int num_classes() const { return static_cast<int>(class_names.size()); }
  // Label counts [num_classes].
  std::vector<int64_t> label_counts() const;
  // Accuracy of always predicting the most frequent label of *this* set (ties: lowest index).
  double majority_accuracy() const;
  // Most frequent label of this set (ties: lowest index).
  int32_t majority_label() const;
};

}  // namespace smt
