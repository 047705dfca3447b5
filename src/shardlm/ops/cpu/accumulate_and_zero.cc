// accumulate_and_zero.cc — CPU acc += convert(x), then x = 0 (ops.h): the mixed-precision fold of
// compute gradients into the main gradients, in one loop.
//
// Exactly the old copy + add_inplace + zero: x's element is converted to acc's dtype T as
// copy() converts it (load as double, round once to T), then added in T, so the result is the
// same bits; x is cleared to +0 with memset, as ParameterRegistry cleared it before. assign
// stores the converted value instead of adding it (copy()'s bits).
#include <cstring>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/storage_float.h"

namespace shardlm::ops::cpu {

namespace {

template <typename T>
void accumulate_impl(T* acc, DType x_dtype, const void* x, int64_t n, bool assign) {
  if (x_dtype == DTypeOf<T>::value) {  // same dtype: a plain add (no per-element switch)
    const T* y = static_cast<const T*>(x);
    if (assign)
      std::memcpy(acc, y, static_cast<size_t>(n) * sizeof(T));
    else
      for (int64_t i = 0; i < n; ++i) acc[i] += y[i];
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T v = static_cast<T>(detail::load_as_double(x_dtype, x, i));
    acc[i] = assign ? v : acc[i] + v;
  }
}

}  // namespace

void accumulate_and_zero(DeviceContext&, Tensor acc, Tensor x, bool assign) {
  if (!detail::is_storage_float(x.dtype()))
    detail::throw_unsupported_dtype("accumulate_and_zero", x.dtype());
  const int64_t n = acc.numel();
  if (n == 0) return;
  detail::dispatch_float(acc.dtype(), "accumulate_and_zero", [&](auto zero) {
    using T = decltype(zero);
    accumulate_impl<T>(acc.data<T>(), x.dtype(), x.raw(), n, assign);
  });
  std::memset(x.raw(), 0, x.nbytes());
}

}  // namespace shardlm::ops::cpu
