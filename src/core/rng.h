// Philox4x32-10 counter-based RNG (Salmon et al. 2011): the same (key, counter) gives the same
// numbers on every machine, thread and backend. Rng wraps it as a stream with a 64-bit key
// (the seed) and a 64-bit position; its state is two integers, so it checkpoints exactly.
// The integer draws (Rng construction, next_u64, below) are SMT_HOST_DEVICE: a CUDA kernel gets the
// same numbers as the host for the same (seed, stream, position).
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace smt {

// Philox4x32-10 on plain words, in place (host and device): ctr becomes the 4 random words for the
// 128-bit counter ctr and the 64-bit key (k0, k1).
SMT_HOST_DEVICE inline void philox4x32_inplace(uint32_t (&ctr)[4], uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t c0 = hi1 ^ ctr[1] ^ k0, c2 = hi0 ^ ctr[3] ^ k1;
    ctr[0] = c0;
    ctr[1] = lo1;
    ctr[2] = c2;
    ctr[3] = lo0;
    k0 += kW0;
    k1 += kW1;
  }
}

// Philox4x32-10 block: 4 random 32-bit words for a 128-bit counter and a 64-bit key.
inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  uint32_t w[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
  philox4x32_inplace(w, key[0], key[1]);
  return {w[0], w[1], w[2], w[3]};
}

// Four words for (seed, stream, index) into out (host and device): stream separates uses (layer,
// purpose), index counts.
SMT_HOST_DEVICE inline void philox_words(uint64_t seed, uint64_t stream, uint64_t index, uint32_t (&out)[4]) {
  out[0] = static_cast<uint32_t>(index);
  out[1] = static_cast<uint32_t>(index >> 32);
  out[2] = static_cast<uint32_t>(stream);
  out[3] = static_cast<uint32_t>(stream >> 32);
  philox4x32_inplace(out, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The same four words as an array (host).
inline std::array<uint32_t, 4> philox(uint64_t seed, uint64_t stream, uint64_t index) {
  uint32_t w[4];
  philox_words(seed, stream, index, w);
  return {w[0], w[1], w[2], w[3]};
}

// Uniform in [0,1) from a 32-bit word (24 bits of mantissa).
inline float uint_to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
inline double uint_to_unit_double(uint32_t hi, uint32_t lo) {
  return static_cast<double>((static_cast<uint64_t>(hi) << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

// A sequential stream over Philox: state = (seed, stream, position). Every draw consumes one
// Philox block (4 words) so that positions are easy to reason about and restore.
class Rng {
 public:
  Rng() = default;
  SMT_HOST_DEVICE Rng(uint64_t seed, uint64_t stream = 0) : seed_(seed), stream_(stream) {}

  SMT_HOST_DEVICE uint64_t seed() const { return seed_; }
  SMT_HOST_DEVICE uint64_t stream() const { return stream_; }
  SMT_HOST_DEVICE uint64_t position() const { return position_; }
  SMT_HOST_DEVICE void set_position(uint64_t p) { position_ = p; }

  std::array<uint32_t, 4> next_block() { return philox(seed_, stream_, position_++); }
  uint32_t next_u32() { return next_block()[0]; }
  SMT_HOST_DEVICE uint64_t next_u64() {
    uint32_t b[4];
    philox_words(seed_, stream_, position_++, b);
    return (static_cast<uint64_t>(b[0]) << 32) | b[1];
  }
  // Uniform double in [0,1).
  double uniform() {
    auto b = next_block();
    return uint_to_unit_double(b[0], b[1]);
  }
  // Uniform integer in [0, n), n > 0 (bias below 2^-32 for n < 2^32: negligible).
  SMT_HOST_DEVICE uint64_t below(uint64_t n) { return next_u64() % n; }
  // Standard normal by Box-Muller (one block per draw).
  double normal() {
    auto b = next_block();
    double u1 = uint_to_unit_double(b[0], b[1]);
    double u2 = uint_to_unit_double(b[2], b[3]);
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t seed_ = 0;
  uint64_t stream_ = 0;
  uint64_t position_ = 0;
};

}  // namespace smt
