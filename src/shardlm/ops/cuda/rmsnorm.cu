// rmsnorm.cu — RMSNorm over the last axis: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
//
// Algorithms:
//  forward: one warp per row of in[N,C]: pass 1 sums x^2, pass 2 writes x*rstd*w (the row is
//    re-read from L1/L2). Saves rstd[N]. Lanes move 16 bytes per access when C and the
//    pointers allow (scalar otherwise).
//  backward, one pass over dout and in (C <= 8192): g = dout*w,
//    din = rstd * (g - x * rstd^2 * mean(g*x)), dweight += sum_n dout * x * rstd. A block
//    (<= 512 threads) covers whole rows: thread t owns the 16-byte chunks t, t+threads, ... of
//    every row (kChunks of them, <= 16 columns), keeps w and its columns' dweight sums in fp32
//    registers, and walks groups of kRows rows grid-stride (one wave, ~512 threads per SM): load
//    the group's chunks, sum g*x per row over the block (block_means, one barrier), write din,
//    add the group into the column sums. At the end each block writes its sums as one row of
//    partial[blocks][C] (fp32 scratch); a second kernel adds the rows in a fixed order into
//    dweight (+=). DRAM traffic: dout and in read once, din written once, plus
//    blocks * C * 4 bytes each way for the partials. Deterministic (fixed grid for a given
//    device and shape, fixed summation order, no atomics). C > 8192 (the column sums would not
//    fit in registers) takes the two-pass path: one warp per row for din, then
//    launch_column_reduce re-reads dout and in for dweight.
#include <cmath>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row (forward; two-pass backward)

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

// One pass: din and the block's column sums of dout*x*rstd (see the banner). din may be null (no
// input gradient), partial null (no weight gradient); chunks = C / kW.
template <typename T, int kW, int kChunks>
__global__ void __launch_bounds__(kRowBlockMaxThreads)
    rmsnorm_backward_fused_kernel(T* din, float* partial, const T* dout, const T* in,
                                  const T* weight, const T* rstd_in, int64_t rows, int64_t C) {
  constexpr int kRows = row_block_rows(kChunks);
  __shared__ float red[2][kRowBlockMaxWarps * kRows];
  const int64_t chunks = C / kW, threads = blockDim.x;
  bool owns[kChunks];  // chunk j of this thread lies inside the row
  float w[kChunks][kW], dw[kChunks][kW];
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    const int64_t q = threadIdx.x + j * threads;
    owns[j] = q < chunks;
    if (owns[j]) load_chunk<kW>(weight + q * kW, w[j]);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      if (!owns[j]) w[j][k] = 0.0f;
      dw[j][k] = 0.0f;
    }
  }
  const int64_t groups = (rows + kRows - 1) / kRows;
  int buffer = 0;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    RowChunk<T, kW> xr[kRows][kChunks], dr[kRows][kChunks];
    float rstd[kRows];
    bool live[kRows];  // row inside the tensor (the last group may be short)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t n = group * kRows + r;
      live[r] = n < rows;
      rstd[r] = live[r] ? load_as_float(rstd_in[n]) : 0.0f;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        if (live[r] && owns[j]) {
          const int64_t off = n * C + (threadIdx.x + j * threads) * kW;
          xr[r][j] = load_row_chunk<kW>(in + off);
          dr[r][j] = load_row_chunk<kW>(dout + off);
        }
      }
    }
    float means[kRows];  // per row: mean of g*x
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float sum_gx = 0.0f;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        if (live[r] && owns[j]) {
          float xv[kW], dv[kW];
          unpack_row_chunk<kW, T>(xr[r][j], xv);
          unpack_row_chunk<kW, T>(dr[r][j], dv);
#pragma unroll
          for (int k = 0; k < kW; ++k) sum_gx += dv[k] * w[j][k] * xv[k];
        }
      }
      means[r] = sum_gx;
    }
    block_means<kRows>(means, red[buffer], static_cast<float>(C));
    buffer ^= 1;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t n = group * kRows + r;
      const float coef = means[r] * rstd[r] * rstd[r];  // = sum / C * rstd * rstd
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        if (live[r] && owns[j]) {
          float xv[kW], dv[kW], out[kW];
          unpack_row_chunk<kW, T>(xr[r][j], xv);
          unpack_row_chunk<kW, T>(dr[r][j], dv);
#pragma unroll
          for (int k = 0; k < kW; ++k) {
            out[k] = rstd[r] * (dv[k] * w[j][k] - xv[k] * coef);
            dw[j][k] += dv[k] * xv[k] * rstd[r];
          }
          if (din != nullptr) store_chunk<kW>(din + n * C + (threadIdx.x + j * threads) * kW, out);
        }
      }
    }
  }
  if (partial == nullptr) return;
  float* pw = partial + static_cast<int64_t>(blockIdx.x) * C;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (!owns[j]) continue;
    const int64_t c0 = (threadIdx.x + j * threads) * kW;
#pragma unroll
    for (int k = 0; k < kW; ++k) pw[c0 + k] = dw[j][k];
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

// ---- launchers ---------------------------------------------------------------------------------
// The one-pass backward; false (nothing launched) when C is too large for it. dweight: [C],
// accumulated (+=), may be null; din may be null.
template <typename T, int kW>
bool launch_rmsnorm_backward_fused(CudaBackendState& st, T* din, T* dweight, const T* dout,
                                   const T* in, const T* weight, const T* rstd, int64_t N,
                                   int64_t C) {
  return dispatch_row_blocks<kW>(C / kW, [&]<int kChunks>(int threads) {
    auto kernel = rmsnorm_backward_fused_kernel<T, kW, kChunks>;
    const int64_t groups = (N + row_block_rows(kChunks) - 1) / row_block_rows(kChunks);
    const int blocks = row_block_count(st, kernel, threads, groups);
    float* partial = nullptr;  // [blocks][C]: dweight's sums
    if (dweight != nullptr)
      partial = static_cast<float*>(st.scratch(sizeof(float) * blocks * C));
    kernel<<<blocks, threads, 0, st.stream()>>>(din, partial, dout, in, weight, rstd, N, C);
    CUDA_CHECK_LAUNCH();
    if (partial != nullptr)
      launch_column_partials_finalize<T, 1>(st, partial, blocks, C, dweight,
                                            static_cast<T*>(nullptr));
  });
}

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
  if (N == 0 || (!has_din && !has_dw)) return;
  CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dout.dtype(), op, [&]<typename T>() {
    T* dx = has_din ? static_cast<T*>(din.raw()) : nullptr;
    T* dw = has_dw ? static_cast<T*>(dweight.raw()) : nullptr;
    const T* dy = static_cast<const T*>(dout.raw());
    const T* x = static_cast<const T*>(in.raw());
    const T* w = static_cast<const T*>(weight.raw());
    const T* r = static_cast<const T*>(rstd.raw());
    constexpr int kW = Vec16<T>::kSize;
    const bool vector = C % kW == 0 && (dx == nullptr || aligned16(dx)) && aligned16(dy) &&
                        aligned16(x) && aligned16(w);
    const bool fused = vector
                           ? launch_rmsnorm_backward_fused<T, kW>(st, dx, dw, dy, x, w, r, N, C)
                           : launch_rmsnorm_backward_fused<T, 1>(st, dx, dw, dy, x, w, r, N, C);
    if (fused) return;
    // Two passes (C > 8192).
    if (dx != nullptr) {
      auto kernel = vector ? rmsnorm_backward_input_kernel<T, kW>
                           : rmsnorm_backward_input_kernel<T, 1>;
      kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
          dx, dy, x, w, r, N, C);
      CUDA_CHECK_LAUNCH();
    }
    if (dw != nullptr)
      launch_column_reduce<T, 1>(st, N, C, RmsNormWeightGradTerm<T>{dy, x, r, C}, dw,
                                 static_cast<T*>(nullptr));
  });
}

}  // namespace shardlm::ops::cuda
