// Philox4x32-10 counter-based RNG (Salmon et al. 2011): the same (key, counter) gives the same
// numbers on every machine, thread and backend. Rng wraps it as a stream with a 64-bit key
// (the seed) and a 64-bit position; its state is two integers, so it checkpoints exactly.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace smt {

// Philox4x32-10 block: 4 random 32-bit words for a 128-bit counter and a 64-bit key.
inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// Four words for (seed, stream, index): stream separates uses (layer, purpose), index counts.
inline std::array<uint32_t, 4> philox(uint64_t seed, uint64_t stream, uint64_t index) {
  return philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                     static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
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
  Rng(uint64_t seed, uint64_t stream = 0) : seed_(seed), stream_(stream) {}

  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  uint64_t position() const { return position_; }
  void set_position(uint64_t p) { position_ = p; }

  std::array<uint32_t, 4> next_block() { return philox(seed_, stream_, position_++); }
  uint32_t next_u32() { return next_block()[0]; }
  uint64_t next_u64() {
    auto b = next_block();
    return (static_cast<uint64_t>(b[0]) << 32) | b[1];
  }
  // Uniform double in [0,1).
  double uniform() {
    auto b = next_block();
    return uint_to_unit_double(b[0], b[1]);
  }
  // Uniform integer in [0, n), n > 0 (bias below 2^-32 for n < 2^32: negligible).
  uint64_t below(uint64_t n) { return next_u64() % n; }
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
