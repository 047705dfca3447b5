// arg_checks.cc — see arg_checks.h.
#include "shardlm/ops/cuda/arg_checks.h"

#include <string>

#include "shardlm/base/error.h"

namespace shardlm::ops::cuda {

void require_on_device(const DeviceContext& ctx, const Tensor& t, const char* op,
                       const char* name) {
  if (!t.defined() || t.raw() == nullptr)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: tensor '" + name + "' is undefined");
  if (t.device() != ctx.device())
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: tensor '" + name + "' is on " +
                    t.device().to_string() + " but the context runs on " +
                    ctx.device().to_string() + " (copy it to the GPU first)");
}

void require_same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* name_a,
                        const char* name_b) {
  if (a.dtype() != b.dtype())
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: '" + name_a + "' is " + dtype_name(a.dtype()) +
                    " but '" + name_b + "' is " + dtype_name(b.dtype()) +
                    " (all float tensors of one call share one dtype)");
}

void require_dtype(const Tensor& t, DType dtype, const char* op, const char* name) {
  if (t.dtype() != dtype)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: '" + name + "' is " +
                                                 dtype_name(t.dtype()) + ", expected " +
                                                 dtype_name(dtype));
}

void require_numel(const Tensor& t, int64_t numel, const char* op, const char* name) {
  if (t.numel() != numel)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: '" + name + "' has shape " + t.shape().to_string() +
                    " (" + std::to_string(t.numel()) + " elements), expected " +
                    std::to_string(numel) + " elements");
}

void require_rows_fit_grid(int64_t rows, const char* op) {
  if (rows > (int64_t{1} << 31) - 1)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: " + std::to_string(rows) +
                    " rows exceed the grid limit of 2^31-1; split the call");
}

}  // namespace shardlm::ops::cuda
