// core/bf16.h: the host fp32 -> bf16 rounding (round half to even) that the GPU cast kernel is checked
// against, on hand-built bit patterns (exact ties, carries into the exponent, overflow, subnormals, NaN)
// and on random floats against the definition (the nearer of the two bf16 neighbours, ties to even).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "core/bf16.h"

namespace smt {
namespace {

uint16_t from_bits(uint32_t u) { return bf16_bits_from_float(std::bit_cast<float>(u)); }

TEST(Bf16, ExactValuesKeepTheirBits) {
  EXPECT_EQ(bf16_bits_from_float(1.0f), 0x3f80);
  EXPECT_EQ(bf16_bits_from_float(-2.0f), 0xc000);
  EXPECT_EQ(bf16_bits_from_float(0.0f), 0x0000);
  EXPECT_EQ(bf16_bits_from_float(-0.0f), 0x8000);
  EXPECT_EQ(bf16_bits_from_float(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(bf16_bits_from_float(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(float_from_bf16_bits(0x3f80), 1.0f);
  EXPECT_EQ(float_from_bf16_bits(0xc040), -3.0f);
}

TEST(Bf16, TiesGoToEvenAndAboveHalfRoundsUp) {
  EXPECT_EQ(from_bits(0x3f808000u), 0x3f80);  // halfway, lower neighbour even
  EXPECT_EQ(from_bits(0x3f818000u), 0x3f82);  // halfway, upper neighbour even
  EXPECT_EQ(from_bits(0x3f808001u), 0x3f81);  // just above half
  EXPECT_EQ(from_bits(0x3f807fffu), 0x3f80);  // just below half
  EXPECT_EQ(from_bits(0xbf818000u), 0xbf82);  // sign does not matter
  EXPECT_EQ(from_bits(0x3fffffffu), 0x4000);  // carry into the exponent
}

TEST(Bf16, OverflowSubnormalsAndNan) {
  EXPECT_EQ(bf16_bits_from_float(std::numeric_limits<float>::max()), 0x7f80);  // beyond bf16 max: inf
  EXPECT_EQ(from_bits(0x7f7f7fffu), 0x7f7f);                                     // largest that stays finite
  EXPECT_EQ(from_bits(0x00018000u), 0x0002);                                     // subnormal tie to even
  EXPECT_EQ(from_bits(0x00008000u), 0x0000);
  EXPECT_EQ(from_bits(0x00008001u), 0x0001);  // rounded, not flushed
  const uint16_t nan = bf16_bits_from_float(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(float_from_bf16_bits(nan)));
  const uint16_t snan_low = from_bits(0x7f800001u);  // NaN whose payload sits only in the dropped bits
  EXPECT_TRUE(std::isnan(float_from_bf16_bits(snan_low)));
  EXPECT_TRUE(std::isnan(float_from_bf16_bits(from_bits(0xffc00000u))));
}

TEST(Bf16, RandomFloatsRoundToTheNearerNeighbour) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-130, 120);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(mant(gen), ex(gen));
    const uint32_t u = std::bit_cast<uint32_t>(x);
    const float lo = std::bit_cast<float>(u & 0xffff0000u);              // truncated (toward zero)
    const float hi = std::bit_cast<float>((u & 0xffff0000u) + 0x10000u);  // next bf16 away from zero
    const float r = round_to_bf16(x);
    ASSERT_TRUE(r == lo || r == hi) << x;
    const double dlo = std::fabs(double(x) - lo), dhi = std::fabs(double(x) - hi);
    if (dlo < dhi) ASSERT_EQ(r, lo) << x;
    else if (dhi < dlo) ASSERT_EQ(r, hi) << x;
    else ASSERT_EQ(bf16_bits_from_float(r) & 1u, 0u) << "tie not to even: " << x;
    EXPECT_LE(std::fabs(double(r) - x), std::ldexp(std::fabs(double(x)), -8) + std::ldexp(1.0, -134)) << x;
  }
}

}  // namespace
}  // namespace smt
