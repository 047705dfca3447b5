// Element conversion between the floating dtypes a checkpoint may hold (fp64, fp32, bf16, fp16)
// on the host; identical dtypes are a memcpy. Used when a checkpoint's dtype differs from the
// target's (an fp64 CPU run loading fp32 values, an fp16 Hugging Face file imported as fp32).
#pragma once

#include <cstdint>

#include "shardlm/tensor/dtype.h"

namespace shardlm::ckpt::detail {

// dst[i] = convert(src[i]) for i < n; throws kUnsupported for non-float pairs that differ.
void convert_elements(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);

}  // namespace shardlm::ckpt::detail
