// linear.cc — CPU fully-connected layer on OpenBLAS GEMM, weight stored [OC, IC] as in
// PyTorch / Megatron (so the forward is in @ weight^T).
//
//   forward:  out[N,OC]    = in[N,IC] @ weight[OC,IC]^T + bias[OC]
//   backward: din[N,IC]    = dout[N,OC] @ weight[OC,IC]         (assigned, beta = 0)
//             dweight[OC,IC] += dout[N,OC]^T @ in[N,IC]         (accumulated, beta = 1)
//             dbias[OC]    += sum_n dout[n,:]                    (accumulated, in double)
//   weight gradient into a wider buffer (linear_weight_grad, fp32 activations, fp64 dweight):
//   the fp32 GEMM result, then converted and assigned or added, exactly what an fp32 gradient
//   folded into an fp64 master gradient gives.
//
// GEMM dimensions must fit OpenBLAS's 32-bit blasint; larger calls throw kUnsupported.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "shardlm/ops/cpu/cpu_ops.h"
#include "shardlm/ops/cpu/detail/float_dispatch.h"

namespace shardlm::ops::cpu {

namespace {

// C[M,Nn] = alpha * op(A) @ op(B) + beta * C, row-major, leading dimensions = row lengths.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t Nn, int64_t K, const float* A,
          const float* B, float beta, float* C) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(Nn),
              static_cast<int>(K), 1.0f, A, static_cast<int>(trans_a ? M : K), B,
              static_cast<int>(trans_b ? K : Nn), beta, C, static_cast<int>(Nn));
}
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t Nn, int64_t K, const double* A,
          const double* B, double beta, double* C) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(Nn),
              static_cast<int>(K), 1.0, A, static_cast<int>(trans_a ? M : K), B,
              static_cast<int>(trans_b ? K : Nn), beta, C, static_cast<int>(Nn));
}

void check_blas_dims(const char* op, int64_t N, int64_t IC, int64_t OC) {
  if (N > INT_MAX || IC > INT_MAX || OC > INT_MAX) {
    throw Error(ErrorKind::kUnsupported,
                std::string(op) + ": dimensions N=" + std::to_string(N) +
                    " IC=" + std::to_string(IC) + " OC=" + std::to_string(OC) +
                    " exceed the 32-bit BLAS interface; split the rows into smaller calls");
  }
}

template <typename T>
void linear_forward_impl(T* out, const T* in, const T* weight, const T* bias, int64_t N, int64_t IC,
                         int64_t OC) {
  if (N == 0) return;
  if (bias != nullptr) {  // out starts as the broadcast bias, then GEMM adds with beta = 1
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) out[n * OC + o] = bias[o];
  }
  gemm(false, true, N, OC, IC, in, weight, bias != nullptr ? T(1) : T(0), out);
}

template <typename T>
void linear_backward_impl(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight,
                          int64_t N, int64_t IC, int64_t OC) {
  // (the dispatcher guarantees IC, OC >= 1; N may be 0, where the accumulated gradients are
  // unchanged)
  if (din != nullptr && N > 0) gemm(false, false, N, IC, OC, dout, weight, T(0), din);
  if (dweight != nullptr && N > 0) gemm(true, false, OC, IC, N, dout, in, T(1), dweight);
  if (dbias != nullptr) {
    std::vector<double> sum(OC, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) sum[o] += dout[n * OC + o];
    for (int64_t o = 0; o < OC; ++o)
      dbias[o] = static_cast<T>(static_cast<double>(dbias[o]) + sum[o]);
  }
}

}  // namespace

void linear_forward(DeviceContext&, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias) {
  detail::dispatch_float(in.dtype(), "linear_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t OC = weight.size(0), IC = weight.size(1), N = in.numel() / IC;
    check_blas_dims("linear_forward", N, IC, OC);
    linear_forward_impl<T>(out.data<T>(), in.data<T>(), weight.data<T>(),
                           bias.defined() ? bias.data<T>() : nullptr, N, IC, OC);
  });
}

void linear_backward(DeviceContext&, Tensor din, Tensor dweight, Tensor dbias, const Tensor& dout,
                     const Tensor& in, const Tensor& weight) {
  detail::dispatch_float(in.dtype(), "linear_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t OC = weight.size(0), IC = weight.size(1), N = in.numel() / IC;
    check_blas_dims("linear_backward", N, IC, OC);
    linear_backward_impl<T>(din.defined() ? din.data<T>() : nullptr,
                            dweight.defined() ? dweight.data<T>() : nullptr,
                            dbias.defined() ? dbias.data<T>() : nullptr, dout.data<T>(),
                            in.data<T>(), weight.data<T>(), N, IC, OC);
  });
}

void linear_weight_grad(DeviceContext&, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate) {
  const int64_t OC = dweight.size(0), IC = dweight.size(1), N = in.numel() / IC;
  check_blas_dims("linear_weight_grad", N, IC, OC);
  if (dweight.dtype() == in.dtype()) {
    detail::dispatch_float(in.dtype(), "linear_weight_grad", [&](auto zero) {
      using T = decltype(zero);
      T* dw = dweight.data<T>();
      if (N > 0)
        gemm(true, false, OC, IC, N, dout.data<T>(), in.data<T>(), accumulate ? T(1) : T(0), dw);
      else if (!accumulate)
        std::fill(dw, dw + OC * IC, T(0));
    });
    return;
  }
  // fp32 activations, fp64 dweight (the dispatcher allows no other mix on the CPU).
  if (in.dtype() != DType::kF32 || dweight.dtype() != DType::kF64)
    throw Error(ErrorKind::kUnsupported,
                std::string("linear_weight_grad on the CPU: ") + dtype_name(in.dtype()) +
                    " activations with a " + dtype_name(dweight.dtype()) +
                    " dweight (the CPU computes in fp32 and fp64 only)");
  std::vector<float> g(static_cast<size_t>(OC * IC), 0.0f);
  if (N > 0) gemm(true, false, OC, IC, N, dout.data<float>(), in.data<float>(), 0.0f, g.data());
  double* dw = dweight.data<double>();
  for (size_t i = 0; i < g.size(); ++i)
    dw[i] = accumulate ? dw[i] + static_cast<double>(g[i]) : static_cast<double>(g[i]);
}

}  // namespace shardlm::ops::cpu
