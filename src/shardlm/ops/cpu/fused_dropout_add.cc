// fused_dropout_add.cc — CPU reference of the fused residual-add + dropout:
//   forward:  out[i] = residual[i] + dropout(x)[i]
//   backward: dx[i]  = dout[i] * keep(i) / (1 - p)      (dresidual is dout itself)
// with the mask of dropout.cc (element i dropped when dropout_uniform(key, position_offset + i)
// <= p) and the same rounding as the unfused pair dropout_forward + add: the scaled value is
// rounded to T first, then added in T. So the result equals the unfused sequence bit for bit,
// which is what lets the model swap one for the other without changing a number.
//
// p == 0 is a plain add: no random numbers are drawn. out may be x or residual (in place).
#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

template <typename T>
void dropout_add_impl(T* out, const T* x, const T* residual, int64_t n, double p,
                      const DropoutKey& key, uint64_t position_offset) {
  if (p == 0.0) {
    for (int64_t i = 0; i < n; ++i) out[i] = residual[i] + x[i];
    return;
  }
  const double scale = 1.0 / (1.0 - p);
  DropoutUniformReader uniform(key);  // one Philox block per four positions
  for (int64_t i = 0; i < n; ++i) {
    const bool dropped = uniform(position_offset + static_cast<uint64_t>(i)) <= p;
    const T branch = dropped ? T(0) : static_cast<T>(static_cast<double>(x[i]) * scale);
    out[i] = residual[i] + branch;
  }
}

}  // namespace

void dropout_add_forward(DeviceContext&, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset) {
  detail::dispatch_float(x.dtype(), "dropout_add_forward", [&](auto zero) {
    using T = decltype(zero);
    dropout_add_impl<T>(out.data<T>(), x.data<T>(), residual.data<T>(), x.numel(), p, key,
                        position_offset);
  });
}

void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset) {
  // The x-branch gradient is exactly dropout's backward (same mask, same scale).
  dropout_backward(ctx, dx, dout, p, key, position_offset);
}

}  // namespace shardlm::ops::cpu
