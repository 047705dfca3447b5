// fp8.h — the two 8-bit float formats of Hopper's tensor cores on the host (the CPU backend and
// the tests' references), bit-compatible with CUDA's cuda_fp8.h conversions:
//   E4M3 (OCP "fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 is
//       NaN; largest finite 448, smallest subnormal 2^-9.
//   E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like with infinities and NaNs;
//       largest finite 57344, smallest subnormal 2^-16.
// Encoding rounds to nearest, ties to even, and saturates: a finite value beyond the largest
// finite one (and an infinity) becomes ± that largest value, as __nv_cvt_float_to_fp8 with
// __NV_SATFINITE does; NaN becomes the format's NaN (0x7F, with the sign).
//
//   uint8_t q = fp8_encode(DType::kF8E4M3, 3.3);   // 0x45 (3.25)
//   double v = fp8_decode(DType::kF8E4M3, q);      // 3.25
#pragma once

#include <cstdint>

#include "shardlm/tensor/dtype.h"

namespace shardlm {

bool dtype_is_fp8(DType dtype);
// The largest finite value of an fp8 format: 448 (E4M3), 57344 (E5M2).
double fp8_max(DType format);
// The value of a code (exact in double, and in float). Throws Error(kInvalidArgument) for a
// dtype that is not fp8.
double fp8_decode(DType format, uint8_t code);
// The code nearest to v (ties to even), saturating as above. v is taken exactly, so callers
// form any product in the precision the CUDA kernels use (fp32) before calling.
uint8_t fp8_encode(DType format, double v);

}  // namespace shardlm
