// storage_float.h — element access to the float dtypes the CPU backend can STORE (fp64, fp32,
// bf16, fp16) through double, for the ops that convert between dtypes (copy, the compute copy
// written by adamw_step, accumulate_and_zero). bf16/fp16 are rounded on the host to nearest
// even, as tensor/dtype.h does; computing still happens in fp32/fp64 only (float_dispatch.h).
//
//   if (!is_storage_float(t.dtype())) throw_unsupported_dtype("copy", t.dtype());
//   store_as(dst.dtype(), dst.raw(), i, load_as_double(src.dtype(), src.raw(), i));
#pragma once

#include <cstdint>

#include "shardlm/base/check.h"
#include "shardlm/tensor/dtype.h"

namespace shardlm::ops::cpu::detail {

inline bool is_storage_float(DType d) {
  return d == DType::kF64 || d == DType::kF32 || d == DType::kBF16 || d == DType::kF16;
}

// Element i of a buffer of dtype d, exactly (every storage float is a double).
inline double load_as_double(DType d, const void* p, int64_t i) {
  switch (d) {
    case DType::kF64:
      return static_cast<const double*>(p)[i];
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16:
      return fp16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      SHARDLM_CHECK(false);
  }
}

// Stores v rounded to dtype d at element i.
inline void store_as(DType d, void* p, int64_t i, double v) {
  switch (d) {
    case DType::kF64:
      static_cast<double*>(p)[i] = v;
      return;
    case DType::kF32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      return;
    // Via float: fp64 -> fp32 -> bf16 can double-round, but fp64 -> bf16 sources are rare and
    // the CUDA backend converts through fp32 too.
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(static_cast<float>(v));
      return;
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = float_to_fp16_bits(static_cast<float>(v));
      return;
    default:
      SHARDLM_CHECK(false);
  }
}

}  // namespace shardlm::ops::cpu::detail
