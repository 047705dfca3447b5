// activations.cc — CPU GELU (tanh approximation, GPT-2 / Megatron's default) and SwiGLU
// (Llama MLP, Megatron's fused [a | b] layout), and tanh (BERT's pooler), forward and backward
// (din assigned; tanh's backward reads its output: tanh'(x) = 1 - tanh(x)^2).
//
//   gelu(x)    = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x)   = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//   swiglu     : in[N,2F] = [a | b],  out[N,F] = silu(a) * b,  silu(a) = a * sigmoid(a)
//   d/da       = dout * b * sigmoid(a) (1 + a (1 - sigmoid(a))),  d/db = dout * silu(a)
#include <cmath>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

constexpr double kGeluCoeff = 0.044715;
constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2 / pi)

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
void gelu_forward_impl(T* out, const T* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = in[i];
    const double u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    out[i] = static_cast<T>(0.5 * x * (1.0 + std::tanh(u)));
  }
}

template <typename T>
void gelu_backward_impl(T* din, const T* dout, const T* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = in[i];
    const double u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    const double th = std::tanh(u);
    const double du = kSqrt2OverPi * (1.0 + 3.0 * kGeluCoeff * x * x);
    const double grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
    din[i] = static_cast<T>(static_cast<double>(dout[i]) * grad);
  }
}

template <typename T>
void swiglu_forward_impl(T* out, const T* in, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    const T* a = in + n * 2 * F;
    const T* b = a + F;
    T* o = out + n * F;
    for (int64_t f = 0; f < F; ++f) {
      const double x = a[f];
      o[f] = static_cast<T>(x * sigmoid(x) * static_cast<double>(b[f]));
    }
  }
}

template <typename T>
void swiglu_backward_impl(T* din, const T* dout, const T* in, int64_t N, int64_t F) {
  for (int64_t n = 0; n < N; ++n) {
    const T* a = in + n * 2 * F;
    const T* b = a + F;
    const T* dy = dout + n * F;
    T* da = din + n * 2 * F;
    T* db = da + F;
    for (int64_t f = 0; f < F; ++f) {
      const double x = a[f];
      const double s = sigmoid(x);
      const double g = dy[f];
      da[f] = static_cast<T>(g * static_cast<double>(b[f]) * s * (1.0 + x * (1.0 - s)));
      db[f] = static_cast<T>(g * x * s);
    }
  }
}

}  // namespace

void gelu_forward(DeviceContext&, Tensor out, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "gelu_forward", [&](auto zero) {
    using T = decltype(zero);
    gelu_forward_impl<T>(out.data<T>(), in.data<T>(), in.numel());
  });
}

void gelu_backward(DeviceContext&, Tensor din, const Tensor& dout, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "gelu_backward", [&](auto zero) {
    using T = decltype(zero);
    gelu_backward_impl<T>(din.data<T>(), dout.data<T>(), in.data<T>(), in.numel());
  });
}

void swiglu_forward(DeviceContext&, Tensor out, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "swiglu_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t F = out.size(-1);
    swiglu_forward_impl<T>(out.data<T>(), in.data<T>(), out.numel() / F, F);
  });
}

void swiglu_backward(DeviceContext&, Tensor din, const Tensor& dout, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "swiglu_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t F = dout.size(-1);
    swiglu_backward_impl<T>(din.data<T>(), dout.data<T>(), in.data<T>(), dout.numel() / F, F);
  });
}

void tanh_forward(DeviceContext&, Tensor out, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "tanh_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* x = in.data<T>();
    T* y = out.data<T>();
    for (int64_t i = 0; i < in.numel(); ++i)
      y[i] = static_cast<T>(std::tanh(static_cast<double>(x[i])));
  });
}

void tanh_backward(DeviceContext&, Tensor din, const Tensor& dout, const Tensor& out) {
  detail::dispatch_float(out.dtype(), "tanh_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* y = out.data<T>();
    const T* dy = dout.data<T>();
    T* dx = din.data<T>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      const double v = y[i];
      dx[i] = static_cast<T>(static_cast<double>(dy[i]) * (1.0 - v * v));
    }
  });
}

}  // namespace shardlm::ops::cpu
