// Thread control for CPU kernels: OpenMP for elementwise/row loops, OpenBLAS for GEMMs.
// set_num_threads() sets both; kernels use parallel_for over independent rows.
#pragma once
#include <cstdint>

namespace smt {

void set_num_threads(int n);  // n <= 0: all cores
int num_threads();

// Run fn(i) for i in [0, n), split over threads when n*cost_per_item is large enough.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t cost_per_item = 1) {
  if (n * cost_per_item < 32768) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

// Dynamic schedule, for rows of uneven cost (sparse attention blocks).
template <typename Fn>
void parallel_for_dynamic(int64_t n, Fn&& fn) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace smt
