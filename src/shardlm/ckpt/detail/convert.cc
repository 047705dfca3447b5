#include "shardlm/ckpt/detail/convert.h"

#include <cstring>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm::ckpt::detail {

namespace {
double load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16: return fp16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return 0;
  }
}
void store(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF64: static_cast<double*>(p)[i] = v; break;
    case DType::kF32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(static_cast<float>(v));
      break;
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = float_to_fp16_bits(static_cast<float>(v));
      break;
    default: break;
  }
}
bool convertible(DType t) {
  return t == DType::kF64 || t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}
}  // namespace

void convert_elements(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  if (dst_dtype == src_dtype) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(dst_dtype));
    return;
  }
  if (!convertible(dst_dtype) || !convertible(src_dtype))
    throw Error(ErrorKind::kUnsupported, std::string("cannot convert checkpoint data from ") +
                                             dtype_name(src_dtype) + " to " +
                                             dtype_name(dst_dtype));
  // Through double: exact for every widening; narrowing to fp32 rounds once, to bf16/fp16 it
  // goes through fp32 (fp64 -> 16-bit may round twice; checkpoints never need that pair).
  for (int64_t i = 0; i < n; ++i) store(dst, dst_dtype, i, load(src, src_dtype, i));
}

}  // namespace shardlm::ckpt::detail
