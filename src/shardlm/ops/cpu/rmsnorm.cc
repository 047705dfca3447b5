// rmsnorm.cc — CPU RMSNorm over the last axis (Llama family), forward (saving rstd per row)
// and backward (din assigned; dweight accumulated).
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  xhat = x * rstd,  out = xhat * weight
//   din  = rstd * (g - xhat * mean(g * xhat)),  g = dout * weight
//
// Sums are accumulated in double; the dweight column sums use a C-sized host scratch vector.
#include <cmath>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

template <typename T>
void rmsnorm_forward_impl(T* out, T* rstd, const T* in, const T* weight, int64_t N, int64_t C,
                          double eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[c]) * static_cast<double>(x[c]);
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(C) + eps);
    T* o = out + n * C;
    for (int64_t c = 0; c < C; ++c)
      o[c] = static_cast<T>(static_cast<double>(x[c]) * r * static_cast<double>(weight[c]));
    rstd[n] = static_cast<T>(r);
  }
}

template <typename T>
void rmsnorm_backward_impl(T* din, T* dweight, const T* dout, const T* in, const T* weight,
                           const T* rstd, int64_t N, int64_t C) {
  std::vector<double> dw(dweight != nullptr ? C : 0, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    const T* dy = dout + n * C;
    const double r = rstd[n];
    double gx_mean = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = static_cast<double>(x[c]) * r;
      gx_mean += static_cast<double>(dy[c]) * static_cast<double>(weight[c]) * xhat;
      if (dweight != nullptr) dw[c] += static_cast<double>(dy[c]) * xhat;
    }
    gx_mean /= static_cast<double>(C);
    if (din == nullptr) continue;
    T* dx = din + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = static_cast<double>(x[c]) * r;
      const double g = static_cast<double>(dy[c]) * static_cast<double>(weight[c]);
      dx[c] = static_cast<T>(r * (g - xhat * gx_mean));
    }
  }
  for (int64_t c = 0; c < static_cast<int64_t>(dw.size()); ++c)
    dweight[c] = static_cast<T>(static_cast<double>(dweight[c]) + dw[c]);
}

}  // namespace

void rmsnorm_forward(DeviceContext&, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps) {
  detail::dispatch_float(in.dtype(), "rmsnorm_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t C = weight.numel();
    rmsnorm_forward_impl<T>(out.data<T>(), rstd.data<T>(), in.data<T>(), weight.data<T>(),
                            in.numel() / C, C, eps);
  });
}

void rmsnorm_backward(DeviceContext&, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd) {
  detail::dispatch_float(in.dtype(), "rmsnorm_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t C = weight.numel();
    rmsnorm_backward_impl<T>(din.defined() ? din.data<T>() : nullptr,
                             dweight.defined() ? dweight.data<T>() : nullptr, dout.data<T>(),
                             in.data<T>(), weight.data<T>(), rstd.data<T>(), in.numel() / C, C);
  });
}

}  // namespace shardlm::ops::cpu
