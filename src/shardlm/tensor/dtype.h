// DType: element types ShardLM stores, with size, name and host-side conversions for the
// 16-bit float formats (round-to-nearest-even, as the hardware does).
//
// fp8 (e4m3/e5m2) exist as storage types so checkpoints and buffers can name them; compute on
// them arrives with the CUDA fp8 work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace shardlm {

enum class DType : uint8_t { kF64, kF32, kBF16, kF16, kI32, kI64, kU16, kF8E4M3, kF8E5M2 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);       // "fp32", "bf16", ...
DType dtype_from_name(const std::string& name);  // throws Error(kInvalidArgument)
bool dtype_is_float(DType dtype);

// Maps a C++ type to its DType, for typed accessors.
template <typename T> struct DTypeOf;
template <> struct DTypeOf<double> { static constexpr DType value = DType::kF64; };
template <> struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kI32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kI64; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::kU16; };

// bf16 <-> fp32 on the host. NaN stays NaN (quiet), rounding is to nearest even.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 <-> fp32 on the host, round-to-nearest-even, subnormals handled.
uint16_t float_to_fp16_bits(float f);
float fp16_bits_to_float(uint16_t h);

}  // namespace shardlm
