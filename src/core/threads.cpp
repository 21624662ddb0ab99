// Thread-count plumbing for OpenMP and OpenBLAS.
#include "core/threads.h"

#include <omp.h>

#include <thread>

extern "C" void openblas_set_num_threads(int);

namespace smt {

static int g_num_threads = 0;

void set_num_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  g_num_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return g_num_threads > 0 ? g_num_threads : omp_get_max_threads(); }

}  // namespace smt
