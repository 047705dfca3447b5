// The standard normal of parameter initialisation (Box-Muller), with log and cos written out in
// correctly rounded IEEE operations only (+, -, *, /, sqrt and exact bit manipulation), so the
// host and the CUDA backend compute bit-identical values: a model initialised on the GPU equals
// the one initialised on the CPU, element for element, without the libm/CUDA-math differences
// (up to an ulp) that std::log and ::log would give.
//
// No fused multiply-adds: on the device every step is an explicit __dadd_rn / __dmul_rn /
// __ddiv_rn (nvcc never contracts those); on the host the one file that instantiates these
// (tensor/philox.cc) is compiled with -ffp-contract=off. Accuracy: |error| < 5e-16 relative for
// log on [2^-32, 1] and < 1e-15 absolute for cos (tests/tensor/normal_math_test.cc).
#pragma once

#include <cstdint>
#include <cstring>

#include "shardlm/base/host_device.h"

namespace shardlm::normal_math {

SHARDLM_HOST_DEVICE double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
SHARDLM_HOST_DEVICE double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
SHARDLM_HOST_DEVICE double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
SHARDLM_HOST_DEVICE double sqrt_rn(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return __builtin_sqrt(a);  // IEEE correctly rounded (sqrtsd)
#endif
}
SHARDLM_HOST_DEVICE uint64_t to_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}
SHARDLM_HOST_DEVICE double from_bits(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Natural log of a normal double u in (0, 1] (uniform_open0's range [2^-32, 1]).
// u = m * 2^e with m in [sqrt(2)/2, sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.1716,
// summed to s^23 (next term < 1e-19); e*ln2 in two parts (fdlibm's ln2_hi has 11 trailing zero
// bits, so e*ln2_hi is exact).
SHARDLM_HOST_DEVICE double log_unit(double u) {
  const uint64_t b = to_bits(u);
  int e = static_cast<int>((b >> 52) & 0x7ff) - 1023;
  double m = from_bits((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  if (m > 1.4142135623730951) {
    m = mul(m, 0.5);
    e += 1;
  }
  const double s = div(add(m, -1.0), add(m, 1.0));
  const double z = mul(s, s);
  double p = div(2.0, 23.0);
  for (int k = 21; k >= 1; k -= 2) p = add(mul(p, z), div(2.0, static_cast<double>(k)));
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  const double de = static_cast<double>(e);
  return add(mul(de, kLn2Hi), add(mul(de, kLn2Lo), mul(s, p)));
}

// cos(2*pi*u) for u in [0, 1]: folded (exactly, by Sterbenz) to t in [0, 1/4] with a sign,
// then a Taylor polynomial of cos(x) or sin(x) for x = 2*pi*t' <= pi/4 (terms to x^16 / x^17).
SHARDLM_HOST_DEVICE double cos_2pi(double u) {
  constexpr double kTwoPi = 6.283185307179586232;
  double t = u > 0.5 ? add(1.0, -u) : u;  // cos(2 pi u) = cos(2 pi (1 - u))
  double sign = 1.0;
  if (t > 0.25) {  // cos(2 pi t) = -cos(2 pi (1/2 - t))
    t = add(0.5, -t);
    sign = -1.0;
  }
  const bool use_sin = t > 0.125;  // cos(2 pi t) = sin(2 pi (1/4 - t))
  const double x = mul(kTwoPi, use_sin ? add(0.25, -t) : t);
  const double z = mul(x, x);
  double p;
  if (use_sin) {  // x (1 - z/3! + z^2/5! - ... + z^8/17!), Horner from z^8
    double fact = 355687428096000.0;  // 17! (every factorial here is exact in a double)
    p = div(1.0, fact);
    for (int k = 16; k >= 2; k -= 2) {  // coefficient of z^j, j = k/2 - 1: (-1)^j / (2j+1)!
      fact = div(fact, static_cast<double>((k + 1) * k));
      const double c = div(1.0, fact);
      p = add(mul(p, z), (k / 2 - 1) % 2 ? -c : c);
    }
    p = mul(p, x);
  } else {  // 1 - z/2! + z^2/4! - ... + z^8/16!
    double fact = 20922789888000.0;  // 16!
    p = div(1.0, fact);
    for (int k = 14; k >= 0; k -= 2) {  // coefficient of z^j, j = k/2: (-1)^j / (2j)!
      fact = div(fact, static_cast<double>((k + 2) * (k + 1)));
      const double c = div(1.0, fact);
      p = add(mul(p, z), (k / 2) % 2 ? -c : c);
    }
  }
  return mul(sign, p);
}

// Box-Muller from the two uniforms of one Philox block: sqrt(-2 log u1) * cos(2 pi u2).
SHARDLM_HOST_DEVICE double box_muller(double u1, double u2) {
  return mul(sqrt_rn(mul(-2.0, log_unit(u1))), cos_2pi(u2));
}

}  // namespace shardlm::normal_math
