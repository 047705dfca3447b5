// layernorm.cc — CPU LayerNorm over the last axis, forward (saving mean and rstd per row) and
// backward (din assigned; dweight, dbias accumulated).
//
//   xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)  (biased variance, as PyTorch)
//   out  = xhat * weight + bias
//   din  = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * weight
//
// Statistics and the per-column weight/bias gradient sums are accumulated in double; the
// column sums use a C-sized host scratch vector (a CPU-only convenience; CUDA ops take a
// workspace instead). bias / dbias may be undefined (LayerNorm without bias).
#include <cmath>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

template <typename T>
void layernorm_forward_impl(T* out, T* mean, T* rstd, const T* in, const T* weight, const T* bias,
                            int64_t N, int64_t C, double eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += x[c];
    const double m = sum / static_cast<double>(C);
    double var = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = static_cast<double>(x[c]) - m;
      var += d * d;
    }
    const double r = 1.0 / std::sqrt(var / static_cast<double>(C) + eps);
    T* o = out + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const double y = (static_cast<double>(x[c]) - m) * r * static_cast<double>(weight[c]);
      o[c] = static_cast<T>(bias != nullptr ? y + static_cast<double>(bias[c]) : y);
    }
    mean[n] = static_cast<T>(m);
    rstd[n] = static_cast<T>(r);
  }
}

template <typename T>
void layernorm_backward_impl(T* din, T* dweight, T* dbias, const T* dout, const T* in,
                             const T* weight, const T* mean, const T* rstd, int64_t N, int64_t C) {
  std::vector<double> dw(dweight != nullptr ? C : 0, 0.0);
  std::vector<double> db(dbias != nullptr ? C : 0, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    const T* dy = dout + n * C;
    const double m = mean[n];
    const double r = rstd[n];
    double g_mean = 0, gx_mean = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (static_cast<double>(x[c]) - m) * r;
      const double g = static_cast<double>(dy[c]) * static_cast<double>(weight[c]);
      g_mean += g;
      gx_mean += g * xhat;
      if (dweight != nullptr) dw[c] += static_cast<double>(dy[c]) * xhat;
      if (dbias != nullptr) db[c] += dy[c];
    }
    g_mean /= static_cast<double>(C);
    gx_mean /= static_cast<double>(C);
    if (din == nullptr) continue;
    T* dx = din + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (static_cast<double>(x[c]) - m) * r;
      const double g = static_cast<double>(dy[c]) * static_cast<double>(weight[c]);
      dx[c] = static_cast<T>(r * (g - g_mean - xhat * gx_mean));
    }
  }
  for (int64_t c = 0; c < static_cast<int64_t>(dw.size()); ++c)
    dweight[c] = static_cast<T>(static_cast<double>(dweight[c]) + dw[c]);
  for (int64_t c = 0; c < static_cast<int64_t>(db.size()); ++c)
    dbias[c] = static_cast<T>(static_cast<double>(dbias[c]) + db[c]);
}

}  // namespace

void layernorm_forward(DeviceContext&, Tensor out, Tensor mean, Tensor rstd, const Tensor& in,
                       const Tensor& weight, const Tensor& bias, double eps) {
  detail::dispatch_float(in.dtype(), "layernorm_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t C = weight.numel();
    layernorm_forward_impl<T>(out.data<T>(), mean.data<T>(), rstd.data<T>(), in.data<T>(),
                              weight.data<T>(), bias.defined() ? bias.data<T>() : nullptr,
                              in.numel() / C, C, eps);
  });
}

void layernorm_backward(DeviceContext&, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd) {
  detail::dispatch_float(in.dtype(), "layernorm_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t C = weight.numel();
    layernorm_backward_impl<T>(
        din.defined() ? din.data<T>() : nullptr, dweight.defined() ? dweight.data<T>() : nullptr,
        dbias.defined() ? dbias.data<T>() : nullptr, dout.data<T>(), in.data<T>(), weight.data<T>(),
        mean.data<T>(), rstd.data<T>(), in.numel() / C, C);
  });
}

}  // namespace shardlm::ops::cpu
