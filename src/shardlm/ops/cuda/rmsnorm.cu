// rmsnorm.cu — RMSNorm over the last axis: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
//
// Algorithms:
//  forward: one warp per row of in[N,C]: pass 1 sums x^2, pass 2 writes x*rstd*w (the row is
//    re-read from L1/L2). Saves rstd[N]. Lanes move 16 bytes per access when C and the
//    pointers allow (scalar otherwise).
//  backward: one warp per row: g = dout*w, din = rstd * (g - x * rstd^2 * mean(g*x));
//    dweight += sum_n dout * x * rstd through column_reduce.cuh (deterministic, fp32).
#include <cmath>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

// ---- kernels ------------------------------------------------------------------------------------
// in, out: [N, C]; weight: [C]; rstd: [N]. Each lane takes chunks of kW consecutive columns
// (kW = 16 bytes of T when the rows allow, else 1).
template <typename T, int kW>
__global__ void rmsnorm_forward_kernel(T* out, T* rstd_out, const T* in, const T* weight,
                                       int64_t rows, int64_t C, float eps) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= rows) return;
  const int lane = threadIdx.x;
  const T* x = in + n * C;
  float sq = 0.0f;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW];
    load_chunk<kW>(x + c, xv);
#pragma unroll
    for (int k = 0; k < kW; ++k) sq += xv[k] * xv[k];
  }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(C) + eps);
  T* y = out + n * C;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], wv[kW], yv[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < kW; ++k) yv[k] = xv[k] * rstd * wv[k];
    store_chunk<kW>(y + c, yv);
  }
  if (lane == 0) rstd_out[n] = float_to<T>(rstd);
}

template <typename T, int kW>
__global__ void rmsnorm_backward_input_kernel(T* din, const T* dout, const T* in,
                                              const T* weight, const T* rstd_in, int64_t rows,
                                              int64_t C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= rows) return;
  const int lane = threadIdx.x;
  const T* x = in + n * C;
  const T* dy = dout + n * C;
  const float rstd = load_as_float(rstd_in[n]);
  float sum_gx = 0.0f;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], dv[kW], wv[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(dy + c, dv);
    load_chunk<kW>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < kW; ++k) sum_gx += dv[k] * wv[k] * xv[k];
  }
  const float coef = warp_sum(sum_gx) / static_cast<float>(C) * rstd * rstd;
  T* dx = din + n * C;
  for (int64_t c = lane * kW; c < C; c += 32 * kW) {
    float xv[kW], dv[kW], wv[kW], out[kW];
    load_chunk<kW>(x + c, xv);
    load_chunk<kW>(dy + c, dv);
    load_chunk<kW>(weight + c, wv);
#pragma unroll
    for (int k = 0; k < kW; ++k) out[k] = rstd * (dv[k] * wv[k] - xv[k] * coef);
    store_chunk<kW>(dx + c, out);
  }
}

// (n, c) -> dout * x * rstd: the per-element term of dweight.
template <typename T>
struct RmsNormWeightGradTerm {
  const T* dout;
  const T* in;
  const T* rstd;
  int64_t C;
  __device__ float2 operator()(int64_t n, int64_t c) const {
    return make_float2(
        load_as_float(dout[n * C + c]) * load_as_float(in[n * C + c]) * load_as_float(rstd[n]),
        0.0f);
  }
};

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void rmsnorm_forward(DeviceContext& ctx, Tensor out, Tensor rstd, const Tensor& in,
                     const Tensor& weight, double eps) {
  const char* op = "rmsnorm_forward";
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, rstd, op, "rstd");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&rstd, &in, &weight})
    require_same_dtype(out, *t, op, "out", "rstd/in/weight");
  const int64_t C = in.size(in.rank() - 1), N = C == 0 ? 0 : in.numel() / C;
  require_numel(out, in.numel(), op, "out");
  require_numel(weight, C, op, "weight");
  require_numel(rstd, N, op, "rstd");
  require_rows_fit_grid(N / kRowsPerBlock + 1, op);
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    constexpr int kW = Vec16<T>::kSize;
    const bool vector =
        C % kW == 0 && aligned16(out.raw()) && aligned16(in.raw()) && aligned16(weight.raw());
    auto kernel = vector ? rmsnorm_forward_kernel<T, kW> : rmsnorm_forward_kernel<T, 1>;
    kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
        static_cast<T*>(out.raw()), static_cast<T*>(rstd.raw()), static_cast<const T*>(in.raw()),
        static_cast<const T*>(weight.raw()), N, C, static_cast<float>(eps));
    CUDA_CHECK_LAUNCH();
  });
}

void rmsnorm_backward(DeviceContext& ctx, Tensor din, Tensor dweight, const Tensor& dout,
                      const Tensor& in, const Tensor& weight, const Tensor& rstd) {
  const char* op = "rmsnorm_backward";
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_on_device(ctx, rstd, op, "rstd");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&in, &weight, &rstd})
    require_same_dtype(dout, *t, op, "dout", "in/weight/rstd");
  const int64_t C = in.size(in.rank() - 1), N = C == 0 ? 0 : in.numel() / C;
  require_numel(dout, in.numel(), op, "dout");
  require_numel(weight, C, op, "weight");
  require_numel(rstd, N, op, "rstd");
  const bool has_din = din.defined(), has_dw = dweight.defined();
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
  require_rows_fit_grid(N / kRowsPerBlock + 1, op);
  if (N == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dout.dtype(), op, [&]<typename T>() {
    const T* dy = static_cast<const T*>(dout.raw());
    const T* x = static_cast<const T*>(in.raw());
    const T* r = static_cast<const T*>(rstd.raw());
    if (has_din) {
      constexpr int kW = Vec16<T>::kSize;
      const bool vector = C % kW == 0 && aligned16(din.raw()) && aligned16(dy) && aligned16(x) &&
                          aligned16(weight.raw());
      auto kernel = vector ? rmsnorm_backward_input_kernel<T, kW>
                           : rmsnorm_backward_input_kernel<T, 1>;
      kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
          static_cast<T*>(din.raw()), dy, x, static_cast<const T*>(weight.raw()), r, N, C);
      CUDA_CHECK_LAUNCH();
    }
    if (has_dw)
      launch_column_reduce<T, 1>(st, N, C, RmsNormWeightGradTerm<T>{dy, x, r, C},
                                 static_cast<T*>(dweight.raw()), static_cast<T*>(nullptr));
  });
}

}  // namespace shardlm::ops::cuda
