#include "shardlm/tensor/fp8.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm {
namespace {

struct Fp8Format {
  int exponent_bits, mantissa_bits, bias;
  bool has_infinity;  // E5M2 (IEEE-like); E4M3 spends the all-ones exponent on finite values
};

Fp8Format format_of(DType dtype) {
  switch (dtype) {
    case DType::kF8E4M3: return {4, 3, 7, false};
    case DType::kF8E5M2: return {5, 2, 15, true};
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string("fp8 conversion: ") + dtype_name(dtype) +
                      " is not an fp8 format (fp8_e4m3 or fp8_e5m2)");
  }
}

// The code's magnitude bits for a finite, non-negative value already on the format's grid.
uint8_t magnitude_code(const Fp8Format& f, double v) {
  const int min_normal_exp = 1 - f.bias;
  if (v == 0.0) return 0;
  int e = 0;
  std::frexp(v, &e);  // v = m · 2^e, m in [0.5, 1)
  const int exp = e - 1;  // v in [2^exp, 2^(exp+1))
  if (exp < min_normal_exp) {  // subnormal: exponent field 0, v = mant · 2^(min_normal - mbits)
    const double mant = std::ldexp(v, f.mantissa_bits - min_normal_exp);
    return static_cast<uint8_t>(mant);
  }
  const double mant = std::ldexp(v, f.mantissa_bits - exp) - std::ldexp(1.0, f.mantissa_bits);
  return static_cast<uint8_t>(((exp + f.bias) << f.mantissa_bits) | static_cast<int>(mant));
}

}  // namespace

bool dtype_is_fp8(DType dtype) { return dtype == DType::kF8E4M3 || dtype == DType::kF8E5M2; }

double fp8_max(DType format) { return format_of(format).has_infinity ? 57344.0 : 448.0; }

double fp8_decode(DType format, uint8_t code) {
  const Fp8Format f = format_of(format);
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  const int exp_field = (code >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1);
  const int mant = code & ((1 << f.mantissa_bits) - 1);
  const int all_ones = (1 << f.exponent_bits) - 1;
  if (f.has_infinity && exp_field == all_ones)
    return mant == 0 ? sign * INFINITY : NAN;
  if (!f.has_infinity && exp_field == all_ones && mant == (1 << f.mantissa_bits) - 1) return NAN;
  if (exp_field == 0) return sign * std::ldexp(mant, 1 - f.bias - f.mantissa_bits);
  return sign * std::ldexp((1 << f.mantissa_bits) + mant, exp_field - f.bias - f.mantissa_bits);
}

uint8_t fp8_encode(DType format, double v) {
  const Fp8Format f = format_of(format);
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  if (std::isnan(v)) return static_cast<uint8_t>(sign | 0x7F);
  const double max = fp8_max(format);
  double a = std::fabs(v);
  if (a >= max) return static_cast<uint8_t>(sign | magnitude_code(f, max));  // saturate
  // The grid spacing at a's binade (the subnormal spacing below the smallest normal).
  int e = 0;
  std::frexp(a, &e);
  const int exp = std::max(e - 1, 1 - f.bias);
  const double quantum = std::ldexp(1.0, exp - f.mantissa_bits);
  a = std::nearbyint(a / quantum) * quantum;  // a / quantum is exact; ties to even (FE_TONEAREST)
  if (a > max) a = max;  // only where rounding carried past the largest binade's top
  return static_cast<uint8_t>(sign | magnitude_code(f, a));
}

}  // namespace shardlm
