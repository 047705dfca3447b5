// adamw.cc — CPU AdamW step over one flat range, as Megatron / apex FusedAdam with
// adam_w_mode (decoupled weight decay), in place on params, exp_avg and exp_avg_sq:
//
//   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//   m_hat = m / (1 - beta1^step),  v_hat = v / (1 - beta2^step)
//   p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
//
// Each element is updated in double and rounded once per stored tensor. With compute_params
// the stored (rounded) parameter is also converted as copy() converts it, into the compute copy.
#include <cmath>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/ops/cpu/detail/storage_float.h"

namespace shardlm::ops::cpu {

namespace {

// compute: the compute copy (nullptr: none), of dtype compute_dtype.
template <typename T>
void adamw_impl(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, int64_t n,
                const AdamWParams& hp, void* compute, DType compute_dtype) {
  const double step = static_cast<double>(hp.step);
  const double bc1 = 1.0 - std::pow(hp.beta1, step);
  const double bc2 = 1.0 - std::pow(hp.beta2, step);
  for (int64_t i = 0; i < n; ++i) {
    // As scale_inplace stores it (double product, rounded to T); exact when grad_scale == 1.
    const double g = static_cast<T>(static_cast<double>(grads[i]) * hp.grad_scale);
    const double m = hp.beta1 * static_cast<double>(exp_avg[i]) + (1.0 - hp.beta1) * g;
    const double v = hp.beta2 * static_cast<double>(exp_avg_sq[i]) + (1.0 - hp.beta2) * g * g;
    const double p = params[i];
    const double update = (m / bc1) / (std::sqrt(v / bc2) + hp.eps) + hp.weight_decay * p;
    exp_avg[i] = static_cast<T>(m);
    exp_avg_sq[i] = static_cast<T>(v);
    params[i] = static_cast<T>(p - hp.lr * update);
    if (compute != nullptr) detail::store_as(compute_dtype, compute, i, params[i]);
  }
}

}  // namespace

void adamw_step(DeviceContext&, Tensor params, const Tensor& grads, Tensor exp_avg,
                Tensor exp_avg_sq, const AdamWParams& hp, Tensor compute_params) {
  const bool with_compute = compute_params.defined();
  if (with_compute && !detail::is_storage_float(compute_params.dtype()))
    detail::throw_unsupported_dtype("adamw_step", compute_params.dtype());
  detail::dispatch_float(params.dtype(), "adamw_step", [&](auto zero) {
    using T = decltype(zero);
    adamw_impl<T>(params.data<T>(), grads.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                  params.numel(), hp, with_compute ? compute_params.raw() : nullptr,
                  with_compute ? compute_params.dtype() : params.dtype());
  });
}

}  // namespace shardlm::ops::cpu
