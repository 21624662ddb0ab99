// SMT_HOST_DEVICE marks a function that is compiled for both the host and the device when nvcc
// compiles the translation unit (__host__ __device__), and is a plain function for the host compiler.
// Such functions may use only what both sides offer: no std::vector, no exceptions, no std::min/max
// (not device functions without --expt-relaxed-constexpr), no dynamic allocation.
#pragma once

#if defined(__CUDACC__)
#define SMT_HOST_DEVICE __host__ __device__
#else
#define SMT_HOST_DEVICE
#endif
