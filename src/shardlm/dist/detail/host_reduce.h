// host_reduce: the element-wise reduction of the in-process communicator, in a fixed order.
//
// dst[i] = in_0[offset+i] op in_1[offset+i] op ... op in_{n-1}[offset+i], evaluated left to
// right in the dtype's accumulator: fp64 in double, fp32 in float, bf16/fp16 in float rounded
// once at the end, int32/int64 in 64-bit two's complement (wrapping). max/min propagate NaN.
// The order is fixed, so the result is bit-identical run to run and the same on every rank.
// dst may alias an input only if the caller does not need that input afterwards for other
// elements (the thread communicator reduces into scratch first).
//
//   host_reduce(DType::kF32, ReduceOp::kSum, out, inputs, /*offset=*/0, n);
#pragma once

#include <cstdint>
#include <span>

#include "shardlm/dist/communicator.h"

namespace shardlm::dist::detail {

void host_reduce(DType dtype, ReduceOp op, void* dst, std::span<const void* const> inputs,
                 int64_t offset, int64_t n);

}  // namespace shardlm::dist::detail
