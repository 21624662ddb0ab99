// Random batches for model tests: byte tokens, right padding (each row keeps N/2..N tokens),
// next-token LM targets, labels in [0, num_classes).
#pragma once
#include <cstdint>

#include "core/rng.h"
#include "data/batch.h"

namespace smt::testing_support {

inline Batch random_padded_batch(int64_t B, int64_t N, int num_classes, uint64_t seed) {
  Batch b;
  b.batch_size = B;
  b.seq_len = N;
  Rng rng(seed, 5);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t len = N / 2 + static_cast<int64_t>(rng.below(N / 2 + 1));
    for (int64_t j = 0; j < N; ++j) {
      b.tokens.push_back(j < len ? static_cast<int32_t>(rng.below(256)) : 0);
      b.valid.push_back(j < len ? 1 : 0);
    }
    for (int64_t j = 0; j < N; ++j) b.lm_targets.push_back(j + 1 < len ? b.tokens[i * N + j + 1] : -1);
    b.labels.push_back(static_cast<int32_t>(rng.below(num_classes)));
    b.groups.push_back(0);
    b.example_idx.push_back(i);
  }
  return b;
}

}  // namespace smt::testing_support
