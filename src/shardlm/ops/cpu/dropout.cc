// dropout.cc — CPU dropout with counter-based masks: element i is dropped when
// dropout_uniform(key, position_offset + i) <= p, kept elements are scaled by 1 / (1 - p).
// Nothing is saved: backward recomputes the same mask from (key, position), which is also
// what makes masks independent of how a tensor is sharded (DESIGN §2.4).
//
// p == 0 copies bit-exactly (no scaling, no random numbers drawn).
#include <cstring>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

// out[i] = in[i] * keep(i) / (1 - p); used for both directions (same mask, same scale).
template <typename T>
void apply_mask(T* out, const T* in, int64_t n, double p, const DropoutKey& key,
                uint64_t position_offset) {
  if (p == 0.0) {
    if (out != in) std::memmove(out, in, static_cast<size_t>(n) * sizeof(T));
    return;
  }
  const double scale = 1.0 / (1.0 - p);
  DropoutUniformReader uniform(key);  // one Philox block per four positions
  for (int64_t i = 0; i < n; ++i) {
    const bool dropped = uniform(position_offset + static_cast<uint64_t>(i)) <= p;
    out[i] = dropped ? T(0) : static_cast<T>(static_cast<double>(in[i]) * scale);
  }
}

}  // namespace

void dropout_forward(DeviceContext&, Tensor out, const Tensor& in, double p, const DropoutKey& key,
                     uint64_t position_offset) {
  detail::dispatch_float(in.dtype(), "dropout_forward", [&](auto zero) {
    using T = decltype(zero);
    apply_mask<T>(out.data<T>(), in.data<T>(), in.numel(), p, key, position_offset);
  });
}

void dropout_backward(DeviceContext&, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset) {
  detail::dispatch_float(dout.dtype(), "dropout_backward", [&](auto zero) {
    using T = decltype(zero);
    apply_mask<T>(din.data<T>(), dout.data<T>(), dout.numel(), p, key, position_offset);
  });
}

}  // namespace shardlm::ops::cpu
