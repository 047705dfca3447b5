// float_dispatch.h — runs a generic lambda with the C++ float type matching a tensor's dtype
// (fp32 -> float, fp64 -> double); any other dtype throws Error(kUnsupported), because the CPU
// backend computes in fp32/fp64 only.
//
//   dispatch_float(x.dtype(), "gelu_forward", [&](auto zero) {
//     using T = decltype(zero);
//     gelu_forward_impl<T>(out.data<T>(), in.data<T>(), n);
//   });
#pragma once

#include <string>

#include "shardlm/base/error.h"
#include "shardlm/tensor/dtype.h"

namespace shardlm::ops::cpu::detail {

[[noreturn]] inline void throw_unsupported_dtype(const char* op, DType dtype) {
  throw Error(ErrorKind::kUnsupported,
              std::string(op) + ": dtype " + dtype_name(dtype) +
                  " is not supported by the CPU backend (it computes in fp32 or fp64; convert "
                  "with ops::copy or run on a CUDA device)");
}

template <typename F>
decltype(auto) dispatch_float(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(float{});
    case DType::kF64:
      return f(double{});
    default:
      throw_unsupported_dtype(op, dtype);
  }
}

}  // namespace shardlm::ops::cpu::detail
