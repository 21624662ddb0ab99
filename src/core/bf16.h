// bfloat16 on the host: fp32 -> bf16 with round-to-nearest-even (the rounding of the device's
// __float2bfloat16_rn and of the GPU cast kernel, whose CPU reference this is) and bf16 -> fp32 (exact).
// Invariants: bf16 is the upper 16 bits of an fp32; NaN stays NaN (quiet, sign kept); values beyond the
// largest bf16 round to +-inf; subnormals are rounded, never flushed.
#pragma once
#include <bit>
#include <cstdint>

namespace smt {

inline uint16_t bf16_bits_from_float(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN: set the quiet bit
  u += 0x7fffu + ((u >> 16) & 1u);  // round half to even on the 16 bits dropped
  return static_cast<uint16_t>(u >> 16);
}

inline float float_from_bf16_bits(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// x rounded to the nearest bf16 (ties to even), as an fp32.
inline float round_to_bf16(float x) { return float_from_bf16_bits(bf16_bits_from_float(x)); }

}  // namespace smt
