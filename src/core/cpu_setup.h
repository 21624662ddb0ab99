// Process-level CPU set-up that must happen before libraries initialise: OpenBLAS picks its
// kernels when it loads, from cpuid, and on CPUs it does not recognise (many VMs) it falls back
// to its SSE3 "Prescott" kernels, 3-4x slower. ensure_cpu_environment() sets OPENBLAS_CORETYPE
// from the features the CPU reports (and OMP_WAIT_POLICY=passive so OpenMP and OpenBLAS
// threads do not spin against each other) and re-executes the program once so they take effect.
#pragma once

namespace smt {

// Call first in main(). Returns only if nothing needed changing (or re-exec failed).
// Set SMT_NO_REEXEC=1 to disable.
void ensure_cpu_environment(char** argv);

// The OpenBLAS core type this CPU supports best ("SkylakeX", "Haswell", ...), or "" if unsure.
const char* best_openblas_coretype();

}  // namespace smt
