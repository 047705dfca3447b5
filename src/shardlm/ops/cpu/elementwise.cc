// elementwise.cc — CPU fill / copy (with dtype conversion) / add / scale and the two
// reductions the optimizer needs (sum of squares for the grad norm, all-finite for fp16 loss
// scaling).
//
// fill and copy also accept bf16 and fp16 storage (converted on the host with round-to-nearest
// -even, as dtype.h does), so low-precision buffers can be filled, inspected and converted on
// the CPU; everything else computes in fp32/fp64 only.
#include <cmath>
#include <cstring>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/storage_float.h"

namespace shardlm::ops::cpu {

using detail::dispatch_float;
using detail::is_storage_float;
using detail::load_as_double;
using detail::store_as;

void fill(DeviceContext&, Tensor out, double value) {
  if (!is_storage_float(out.dtype())) detail::throw_unsupported_dtype("fill", out.dtype());
  const int64_t n = out.numel();
  for (int64_t i = 0; i < n; ++i) store_as(out.dtype(), out.raw(), i, value);
}

void copy(DeviceContext&, Tensor dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  if (dst.dtype() == src.dtype()) {  // any dtype, bit-exact (memmove: views may overlap)
    std::memmove(dst.raw(), src.raw(), dst.nbytes());
    return;
  }
  if (!is_storage_float(src.dtype())) detail::throw_unsupported_dtype("copy", src.dtype());
  if (!is_storage_float(dst.dtype())) detail::throw_unsupported_dtype("copy", dst.dtype());
  const int64_t n = dst.numel();
  for (int64_t i = 0; i < n; ++i)
    store_as(dst.dtype(), dst.raw(), i, load_as_double(src.dtype(), src.raw(), i));
}

void add(DeviceContext&, Tensor out, const Tensor& a, const Tensor& b) {
  dispatch_float(out.dtype(), "add", [&](auto zero) {
    using T = decltype(zero);
    T* o = out.data<T>();
    const T* x = a.data<T>();
    const T* y = b.data<T>();
    const int64_t n = out.numel();
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
  });
}

void add_inplace(DeviceContext&, Tensor acc, const Tensor& x) {
  dispatch_float(acc.dtype(), "add_inplace", [&](auto zero) {
    using T = decltype(zero);
    T* o = acc.data<T>();
    const T* y = x.data<T>();
    const int64_t n = acc.numel();
    for (int64_t i = 0; i < n; ++i) o[i] += y[i];
  });
}

void scale_inplace(DeviceContext&, Tensor x, double alpha) {
  dispatch_float(x.dtype(), "scale_inplace", [&](auto zero) {
    using T = decltype(zero);
    T* o = x.data<T>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<T>(static_cast<double>(o[i]) * alpha);
  });
}

double sum_squares(DeviceContext&, const Tensor& x) {
  return dispatch_float(x.dtype(), "sum_squares", [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    return s;
  });
}

bool all_finite(DeviceContext&, const Tensor& x) {
  return dispatch_float(x.dtype(), "all_finite", [&](auto zero) {
    using T = decltype(zero);
    const T* p = x.data<T>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) return false;
    return true;
  });
}

}  // namespace shardlm::ops::cpu
