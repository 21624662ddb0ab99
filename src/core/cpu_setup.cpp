// OpenBLAS kernel selection and OpenMP wait policy, fixed before the libraries load (see cpu_setup.h).
#include "core/cpu_setup.h"

#include <unistd.h>

#include <cstdlib>

namespace smt {

const char* best_openblas_coretype() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

void ensure_cpu_environment(char** argv) {
  if (std::getenv("SMT_NO_REEXEC") != nullptr) return;
  bool changed = false;
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const char* core = best_openblas_coretype();
    if (core[0] != '\0') {
      setenv("OPENBLAS_CORETYPE", core, 1);
      changed = true;
    }
  }
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    changed = true;
  }
  if (!changed) return;
  setenv("SMT_NO_REEXEC", "1", 1);  // at most once
  execv("/proc/self/exe", argv);
  // execv failed (no /proc): carry on with the kernels OpenBLAS chose.
}

}  // namespace smt
