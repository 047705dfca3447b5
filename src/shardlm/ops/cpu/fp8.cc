// fp8.cc — CPU fp8 ops (ops.h): amax, scales, quantisation through tensor/fp8.h's host
// conversions, and the scaled GEMM as a float GEMM over the decoded codes (every fp8 value and
// every product of two is exact in fp32, so only the summation order differs from cuBLASLt).
#include <cblas.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"
#include "shardlm/tensor/fp8.h"

namespace shardlm::ops::cpu {
namespace {

// The decoded value of each of the 256 codes, as T.
template <typename T>
std::vector<T> decode_table(DType format) {
  std::vector<T> table(256);
  for (int c = 0; c < 256; ++c) table[c] = static_cast<T>(fp8_decode(format, static_cast<uint8_t>(c)));
  return table;
}

template <typename T>
std::vector<T> decoded(const Tensor& codes) {
  const std::vector<T> table = decode_table<T>(codes.dtype());
  const uint8_t* q = static_cast<const uint8_t*>(codes.raw());
  std::vector<T> v(static_cast<size_t>(codes.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = table[q[i]];
  return v;
}

void gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, const float* B,
             float beta, float* C) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(K), B, static_cast<int>(K), beta, C,
              static_cast<int>(N));
}
void gemm_nt(int64_t M, int64_t N, int64_t K, double alpha, const double* A, const double* B,
             double beta, double* C) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(K), B, static_cast<int>(K), beta, C,
              static_cast<int>(N));
}

}  // namespace

void abs_max(DeviceContext&, Tensor amax, const Tensor& in) {
  detail::dispatch_float(in.dtype(), "abs_max", [&](auto zero) {
    using T = decltype(zero);
    const T* x = in.data<T>();
    T m = T(0);
    for (int64_t i = 0; i < in.numel(); ++i) {
      const T a = std::fabs(x[i]);
      if (a > m) m = a;  // false for NaN: NaN elements are skipped
    }
    amax.data<float>()[0] = static_cast<float>(m);
  });
}

void fp8_scale_from_amax(DeviceContext&, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin) {
  const float max = static_cast<float>(fp8_max(format));
  const float* a = amax.data<float>();
  float* s = scale.data<float>();
  float* s_inv = scale_inv.data<float>();
  for (int64_t i = 0; i < amax.numel(); ++i) {
    float v = 1.0f;
    if (a[i] != 0.0f) {
      v = std::ldexp(max / a[i], -margin);
      if (std::isinf(v)) v = FLT_MAX;
    }
    s[i] = v;
    s_inv[i] = 1.0f / v;
  }
}

void fp8_quantize(DeviceContext&, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale) {
  const DType format = q.defined() ? q.dtype() : q_t.dtype();
  const int64_t C = in.size(in.rank() - 1), N = C == 0 ? 0 : in.numel() / C;
  uint8_t* out = q.defined() ? static_cast<uint8_t*>(q.raw()) : nullptr;
  uint8_t* out_t = q_t.defined() ? static_cast<uint8_t*>(q_t.raw()) : nullptr;
  const float s = scale.data<float>()[0];
  detail::dispatch_float(in.dtype(), "fp8_quantize", [&](auto zero) {
    using T = decltype(zero);
    const T* x = in.data<T>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const T v = x[n * C + c] * static_cast<T>(s);  // fp32 product (fp64 for fp64)
        const uint8_t code = fp8_encode(format, static_cast<double>(v));
        if (out) out[n * C + c] = code;
        if (out_t) out_t[c * N + n] = code;
      }
  });
}

void fp8_gemm(DeviceContext&, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
    throw Error(ErrorKind::kUnsupported,
                "fp8_gemm on the CPU: M=" + std::to_string(M) + " N=" + std::to_string(N) +
                    " K=" + std::to_string(K) + " exceed the 32-bit BLAS interface");
  detail::dispatch_float(out.dtype(), "fp8_gemm", [&](auto zero) {
    using T = decltype(zero);
    const std::vector<T> A = decoded<T>(a), B = decoded<T>(b);
    const T alpha = static_cast<T>(a_scale_inv.data<float>()[0]) *
                    static_cast<T>(b_scale_inv.data<float>()[0]);
    T* y = out.data<T>();
    if (K == 0) {
      if (!accumulate)
        for (int64_t i = 0; i < M * N; ++i) y[i] = T(0);
    } else if (M * N > 0) {
      gemm_nt(M, N, K, alpha, A.data(), B.data(), accumulate ? T(1) : T(0), y);
    }
    if (bias.defined()) {
      const T* bb = bias.data<T>();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * N + n] += bb[n];
    }
  });
}

}  // namespace shardlm::ops::cpu
