// tensor/normal_math.h: the log and cos written in correctly rounded operations are accurate
// against libm (so init draws are standard normals), exact at the folding points, and the
// Box-Muller value init_normal returns is built from them.
#include "shardlm/tensor/normal_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "shardlm/tensor/philox.h"

namespace shardlm {
namespace {

TEST(NormalMath, LogMatchesLibmOverTheUniformRange) {
  double worst = 0;
  for (uint32_t i = 0; i < 1000000; ++i) {
    const uint32_t bits = i * 4294u + (i >> 7) * 977u;  // spread over [0, 2^32)
    const double u = uniform_open0(bits);
    const double want = std::log(u);
    if (want != 0) worst = std::max(worst, std::fabs(normal_math::log_unit(u) - want) / -want);
  }
  EXPECT_LT(worst, 5e-16);
  EXPECT_EQ(normal_math::log_unit(1.0), 0.0);
  EXPECT_NEAR(normal_math::log_unit(0x1p-32), -32 * std::numbers::ln2, 1e-14);
  EXPECT_NEAR(normal_math::log_unit(0.5), -std::numbers::ln2, 1e-16);
}

TEST(NormalMath, CosOfTwoPiUMatchesLibmAndItsSymmetries) {
  double worst = 0;
  for (int i = 0; i <= 1000000; ++i) {
    const double u = i / 1000000.0;
    const double want = std::cos(2 * std::numbers::pi * u);
    worst = std::max(worst, std::fabs(normal_math::cos_2pi(u) - want));
  }
  EXPECT_LT(worst, 1e-15);
  EXPECT_EQ(normal_math::cos_2pi(0.0), 1.0);
  EXPECT_EQ(normal_math::cos_2pi(0.5), -1.0);
  EXPECT_EQ(normal_math::cos_2pi(1.0), 1.0);
  EXPECT_EQ(normal_math::cos_2pi(0.25), 0.0);
  EXPECT_EQ(normal_math::cos_2pi(0.1), normal_math::cos_2pi(0.9));
}

TEST(NormalMath, InitNormalIsBoxMullerOfTheFirstTwoPhiloxWords) {
  const PhiloxKey key = init_normal_key(9, "w");
  for (uint64_t index : {uint64_t{0}, uint64_t{1}, uint64_t{123456789}, uint64_t{1} << 40}) {
    const PhiloxCounter c = philox4x32(
        {static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0, 0}, key);
    const double u1 = uniform_open0(c[0]), u2 = uniform_open0(c[1]);
    EXPECT_EQ(init_normal(key, index), normal_math::box_muller(u1, u2));
    EXPECT_NEAR(init_normal(key, index),
                std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2), 1e-14);
  }
}

}  // namespace
}  // namespace shardlm
