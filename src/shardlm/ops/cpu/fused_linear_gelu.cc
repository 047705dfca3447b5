// fused_linear_gelu.cc — CPU reference of the MLP's first projection fused with GELU, and of
// GELU's backward fused with that projection's bias gradient:
//   linear_gelu_forward:      pre = in @ weight^T + bias;  out = gelu_tanh(pre)
//   gelu_backward_bias_grad:  dpre = dout * gelu'(pre) (assign);  dbias += sum_n dpre[n, :]
// On the CPU these are, by definition, the composition of the unfused ops (linear_forward then
// gelu_forward; gelu_backward then linear_backward's bias reduction: column sums in double of
// the stored dpre, rounded once onto dbias), so a model that switches to them changes no number.
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

// dbias[F] += sum over rows of g[N, F], summed in double and rounded once (as linear_backward).
template <typename T>
void accumulate_column_sums(T* dbias, const T* g, int64_t N, int64_t F) {
  std::vector<double> sum(static_cast<size_t>(F), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f) sum[f] += g[n * F + f];
  for (int64_t f = 0; f < F; ++f) dbias[f] = static_cast<T>(static_cast<double>(dbias[f]) + sum[f]);
}

}  // namespace

void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias) {
  linear_forward(ctx, pre, in, weight, bias);
  gelu_forward(ctx, out, pre);
}

void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre) {
  gelu_backward(ctx, dpre, dout, pre);
  if (!dbias.defined()) return;
  detail::dispatch_float(dpre.dtype(), "gelu_backward_bias_grad", [&](auto zero) {
    using T = decltype(zero);
    const int64_t F = dpre.size(-1);
    accumulate_column_sums<T>(dbias.data<T>(), dpre.data<T>(), dpre.numel() / F, F);
  });
}

}  // namespace shardlm::ops::cpu
