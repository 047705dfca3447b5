// layernorm.cu — LayerNorm over the last axis, forward and backward.
//
// Algorithms:
//  forward: one warp per row of in[N,C]: pass 1 sums x (mean), pass 2 sums (x-mean)^2 (two-pass
//    variance, no cancellation), pass 3 writes (x-mean)*rstd*w + b; the row is re-read from
//    L1/L2, so DRAM traffic is one read and one write. Saves mean[N], rstd[N]. Lanes move 16
//    bytes per access when C and the pointers allow (scalar otherwise).
//  backward: din per row (one warp): g = dout*w, din = rstd * (g - mean(g) - xhat*mean(g*xhat));
//    dweight += sum_n dout*xhat and dbias += sum_n dout through column_reduce.cuh
//    (deterministic, fp32).
#include <cmath>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

// ---- kernels ------------------------------------------------------------------------------------
// in, out: [N, C]; weight, bias: [C]; mean, rstd: [N]. Each lane takes chunks of kW consecutive
// columns (kW = 16 bytes of T when the rows allow, else 1).
template <typename T, int kW>
__global__ void layernorm_forward_kernel(T* out, T* mean_out, T* rstd_out, const T* in,
                                         const T* weight, const T* bias, int64_t rows,
                                         int64_t C, float eps) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= rows) return;
  const int lane = threadIdx.x;
  const T* x = in + n * C;
  float sum = 0.0f;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW];
    load_chunk<kW>(x + c, xv);
#pragma unroll
    for (int k = 0; k < kW; ++k) sum += xv[k];
  }
  const float mean = warp_sum(sum) / static_cast<float>(C);
  float sq = 0.0f;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW];
    load_chunk<kW>(x + c, xv);
#pragma unroll
    for (int k = 0; k < kW; ++k) sq += (xv[k] - mean) * (xv[k] - mean);
  }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(C) + eps);
  T* y = out + n * C;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], wv[kW], bv[kW], yv[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(weight + c, wv);
    load_chunk<kW>(bias + c, bv);
#pragma unroll
    for (int k = 0; k < kW; ++k) yv[k] = (xv[k] - mean) * rstd * wv[k] + bv[k];
    store_chunk<kW>(y + c, yv);
  }
  if (lane == 0) {
    mean_out[n] = float_to<T>(mean);
    rstd_out[n] = float_to<T>(rstd);
  }
}

template <typename T, int kW>
__global__ void layernorm_backward_input_kernel(T* din, const T* dout, const T* in,
                                                const T* weight, const T* mean_in,
                                                const T* rstd_in, int64_t rows, int64_t C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= rows) return;
  const int lane = threadIdx.x;
  const T* x = in + n * C;
  const T* dy = dout + n * C;
  const float mean = load_as_float(mean_in[n]), rstd = load_as_float(rstd_in[n]);
  float sum_g = 0.0f, sum_g_xhat = 0.0f;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], dv[kW], wv[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(dy + c, dv);
    load_chunk<kW>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float g = dv[k] * wv[k];
      sum_g += g;
      sum_g_xhat += g * (xv[k] - mean) * rstd;
    }
  }
  const float mean_g = warp_sum(sum_g) / static_cast<float>(C);
  const float mean_g_xhat = warp_sum(sum_g_xhat) / static_cast<float>(C);
  T* dx = din + n * C;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], dv[kW], wv[kW], out[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(dy + c, dv);
    load_chunk<kW>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < kW; ++k)
      out[k] = rstd * (dv[k] * wv[k] - mean_g - (xv[k] - mean) * rstd * mean_g_xhat);
    store_chunk<kW>(dx + c, out);
  }
}

// (n, c) -> (dout * xhat, dout): the per-element terms of dweight and dbias.
template <typename T>
struct LayerNormParamGradTerms {
  const T* dout;
  const T* in;
  const T* mean;
  const T* rstd;
  int64_t C;
  __device__ float2 operator()(int64_t n, int64_t c) const {
    const float dy = load_as_float(dout[n * C + c]);
    const float xhat = (load_as_float(in[n * C + c]) - load_as_float(mean[n])) *
                       load_as_float(rstd[n]);
    return make_float2(dy * xhat, dy);
  }
};

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void layernorm_forward(DeviceContext& ctx, Tensor out, Tensor mean, Tensor rstd,
                       const Tensor& in, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layernorm_forward";
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, mean, op, "mean");
  require_on_device(ctx, rstd, op, "rstd");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_on_device(ctx, bias, op, "bias");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&mean, &rstd, &in, &weight, &bias})
    require_same_dtype(out, *t, op, "out", "mean/rstd/in/weight/bias");
  const int64_t C = in.size(in.rank() - 1), N = C == 0 ? 0 : in.numel() / C;
  require_numel(out, in.numel(), op, "out");
  require_numel(weight, C, op, "weight");
  require_numel(bias, C, op, "bias");
  require_numel(mean, N, op, "mean");
  require_numel(rstd, N, op, "rstd");
  require_rows_fit_grid(N / kRowsPerBlock + 1, op);
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    constexpr int kW = Vec16<T>::kSize;
    const bool vector = C % kW == 0 && aligned16(out.raw()) && aligned16(in.raw()) &&
                        aligned16(weight.raw()) && aligned16(bias.raw());
    auto kernel = vector ? layernorm_forward_kernel<T, kW> : layernorm_forward_kernel<T, 1>;
    kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
        static_cast<T*>(out.raw()), static_cast<T*>(mean.raw()), static_cast<T*>(rstd.raw()),
        static_cast<const T*>(in.raw()), static_cast<const T*>(weight.raw()),
        static_cast<const T*>(bias.raw()), N, C, static_cast<float>(eps));
    CUDA_CHECK_LAUNCH();
  });
}

void layernorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                        const Tensor& dout, const Tensor& in, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_backward";
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_on_device(ctx, mean, op, "mean");
  require_on_device(ctx, rstd, op, "rstd");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&in, &weight, &mean, &rstd})
    require_same_dtype(dout, *t, op, "dout", "in/weight/mean/rstd");
  const int64_t C = in.size(in.rank() - 1), N = C == 0 ? 0 : in.numel() / C;
  require_numel(dout, in.numel(), op, "dout");
  require_numel(weight, C, op, "weight");
  require_numel(mean, N, op, "mean");
  require_numel(rstd, N, op, "rstd");
  const bool has_din = din.defined(), has_dw = dweight.defined(), has_db = dbias.defined();
  if (has_din) {
    require_on_device(ctx, din, op, "din");
    require_same_dtype(dout, din, op, "dout", "din");
    require_numel(din, in.numel(), op, "din");
  }
  if (has_dw) {
    require_on_device(ctx, dweight, op, "dweight");
    require_same_dtype(dout, dweight, op, "dout", "dweight");
    require_numel(dweight, C, op, "dweight");
  }
  if (has_db) {
    require_on_device(ctx, dbias, op, "dbias");
    require_same_dtype(dout, dbias, op, "dout", "dbias");
    require_numel(dbias, C, op, "dbias");
  }
  require_rows_fit_grid(N / kRowsPerBlock + 1, op);
  if (N == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dout.dtype(), op, [&]<typename T>() {
    const T* dy = static_cast<const T*>(dout.raw());
    const T* x = static_cast<const T*>(in.raw());
    const T* m = static_cast<const T*>(mean.raw());
    const T* r = static_cast<const T*>(rstd.raw());
    if (has_din) {
      constexpr int kW = Vec16<T>::kSize;
      const bool vector = C % kW == 0 && aligned16(din.raw()) && aligned16(dy) && aligned16(x) &&
                          aligned16(weight.raw());
      auto kernel = vector ? layernorm_backward_input_kernel<T, kW>
                           : layernorm_backward_input_kernel<T, 1>;
      kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
          static_cast<T*>(din.raw()), dy, x, static_cast<const T*>(weight.raw()), m, r, N, C);
      CUDA_CHECK_LAUNCH();
    }
    launch_column_reduce<T, 2>(st, N, C, LayerNormParamGradTerms<T>{dy, x, m, r, C},
                               has_dw ? static_cast<T*>(dweight.raw()) : nullptr,
                               has_db ? static_cast<T*>(dbias.raw()) : nullptr);
  });
}

}  // namespace shardlm::ops::cuda
