// arg_checks.h — the checks every CUDA op entry point runs on its arguments before launching,
// each throwing Error(kInvalidArgument) with the op, the argument's name and what was found.
// (The dispatcher validates shapes; these guard what the kernels rely on: device, dtype,
// element counts.)
//
//   require_on_device(ctx, out, "gelu_forward", "out");
//   require_same_dtype(out, in, "gelu_forward", "out", "in");
#pragma once

#include <cstdint>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops::cuda {

// A defined view on the context's CUDA device (cuda:ctx.device().index).
void require_on_device(const DeviceContext& ctx, const Tensor& t, const char* op,
                       const char* name);
void require_same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* name_a,
                        const char* name_b);
void require_dtype(const Tensor& t, DType dtype, const char* op, const char* name);
void require_numel(const Tensor& t, int64_t numel, const char* op, const char* name);
// Element counts are passed to kernels as int64 but grid sizes as int: refuse absurd sizes.
void require_rows_fit_grid(int64_t rows, const char* op);

}  // namespace shardlm::ops::cuda
