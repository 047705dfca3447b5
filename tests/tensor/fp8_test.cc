// Tests of the host fp8 conversions (tensor/fp8.h) against the formats' definitions: every code's
// value from its bit fields, encoding as the nearest code by brute force over all 256 (ties to
// the even code), saturation at the largest finite value, NaN, signed zero and subnormals.
#include "shardlm/tensor/fp8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "shardlm/base/error.h"

namespace shardlm {
namespace {

struct Format {
  DType dtype;
  int exponent_bits, mantissa_bits, bias;
  double max;
};
const Format kFormats[] = {{DType::kF8E4M3, 4, 3, 7, 448.0}, {DType::kF8E5M2, 5, 2, 15, 57344.0}};

bool is_nan_code(const Format& f, int code) {
  const int e = (code >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1);
  const int m = code & ((1 << f.mantissa_bits) - 1);
  if (f.dtype == DType::kF8E4M3) return e == 15 && m == 7;
  return e == 31 && m != 0;
}
bool is_inf_code(const Format& f, int code) {
  return f.dtype == DType::kF8E5M2 && ((code >> 2) & 31) == 31 && (code & 3) == 0;
}

// The value by the textbook definition, written independently of fp8.cc.
double definition(const Format& f, int code) {
  const int e = (code >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1);
  const int m = code & ((1 << f.mantissa_bits) - 1);
  const double sign = code & 0x80 ? -1.0 : 1.0;
  const double frac = static_cast<double>(m) / (1 << f.mantissa_bits);
  if (e == 0) return sign * frac * std::pow(2.0, 1 - f.bias);
  return sign * (1.0 + frac) * std::pow(2.0, e - f.bias);
}

// The nearest finite code to v by brute force, ties to the even code, beyond max saturated.
uint8_t nearest(const Format& f, double v) {
  if (std::fabs(v) >= f.max) v = std::copysign(f.max, v);
  int best = -1;
  double best_d = INFINITY;
  for (int c = 0; c < 256; ++c) {
    if (is_nan_code(f, c) || is_inf_code(f, c)) continue;
    if (std::signbit(definition(f, c)) != std::signbit(v)) continue;  // -0 for negatives
    const double d = std::fabs(definition(f, c) - v);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best_d = d;
      best = c;
    }
  }
  return static_cast<uint8_t>(best);
}

TEST(Fp8, EveryCodeDecodesToItsDefinition) {
  for (const Format& f : kFormats) {
    EXPECT_EQ(fp8_max(f.dtype), f.max);
    int finite = 0;
    for (int c = 0; c < 256; ++c) {
      const double v = fp8_decode(f.dtype, static_cast<uint8_t>(c));
      if (is_nan_code(f, c)) {
        EXPECT_TRUE(std::isnan(v)) << c;
      } else if (is_inf_code(f, c)) {
        EXPECT_TRUE(std::isinf(v)) << c;
      } else {
        ++finite;
        EXPECT_EQ(v, definition(f, c)) << dtype_name(f.dtype) << " code " << c;
        // Round trip: every finite code encodes back to itself (-0 included).
        EXPECT_EQ(fp8_encode(f.dtype, v), c) << dtype_name(f.dtype) << " code " << c;
      }
    }
    EXPECT_EQ(finite, f.dtype == DType::kF8E4M3 ? 254 : 248);
  }
  EXPECT_EQ(fp8_decode(DType::kF8E4M3, 0x7E), 448.0);
  EXPECT_EQ(fp8_decode(DType::kF8E5M2, 0x7B), 57344.0);
  EXPECT_EQ(fp8_decode(DType::kF8E4M3, 0x01), std::ldexp(1.0, -9));
  EXPECT_EQ(fp8_decode(DType::kF8E5M2, 0x01), std::ldexp(1.0, -16));
}

TEST(Fp8, EncodeIsNearestTiesToEven) {
  std::mt19937_64 rng(7);
  for (const Format& f : kFormats) {
    std::vector<double> probes;
    // Random magnitudes over the whole range (subnormal to beyond max), both signs.
    std::uniform_real_distribution<double> log2mag(-f.bias - f.mantissa_bits - 2,
                                                   std::log2(f.max) + 2);
    for (int i = 0; i < 4000; ++i)
      probes.push_back((i % 2 ? -1.0 : 1.0) * std::exp2(log2mag(rng)));
    // Every midpoint between neighbouring finite codes (the ties), and just either side.
    for (int c = 0; c < 0x7F; ++c) {
      if (is_nan_code(f, c + 1) || is_inf_code(f, c + 1)) break;
      const double mid = 0.5 * (definition(f, c) + definition(f, c + 1));
      for (double v : {mid, std::nextafter(mid, 0.0), std::nextafter(mid, 1e9)}) {
        probes.push_back(v);
        probes.push_back(-v);
      }
    }
    for (double v : {f.max * 1.03, f.max * 1e6, 1e300, double(INFINITY), -double(INFINITY)})
      probes.push_back(v);
    for (double v : probes)
      ASSERT_EQ(fp8_encode(f.dtype, v), nearest(f, v)) << dtype_name(f.dtype) << " v=" << v;
    // Saturation keeps the sign; NaN stays NaN.
    EXPECT_EQ(fp8_decode(f.dtype, fp8_encode(f.dtype, -1e30)), -f.max);
    EXPECT_TRUE(std::isnan(fp8_decode(f.dtype, fp8_encode(f.dtype, NAN))));
  }
  // Ties go to the even code: 17 lies between 16 (0x58) and 18 (0x59) in E4M3.
  EXPECT_EQ(fp8_encode(DType::kF8E4M3, 17.0), 0x58);
  EXPECT_EQ(fp8_encode(DType::kF8E4M3, 19.0), 0x5A);  // between 18 (0x59) and 20 (0x5A)
}

TEST(Fp8, NonFp8DtypeIsRejected) {
  EXPECT_THROW(fp8_encode(DType::kBF16, 1.0), Error);
  EXPECT_THROW(fp8_decode(DType::kF32, 1), Error);
  EXPECT_TRUE(dtype_is_fp8(DType::kF8E5M2));
  EXPECT_FALSE(dtype_is_fp8(DType::kF16));
}

}  // namespace
}  // namespace shardlm
