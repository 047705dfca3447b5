// layernorm.cu — LayerNorm over the last axis, forward and backward.
//
// Algorithms:
//  forward: one warp per row of in[N,C]: pass 1 sums x (mean), pass 2 sums (x-mean)^2 (two-pass
//    variance, no cancellation), pass 3 writes (x-mean)*rstd*w + b; the row is re-read from
//    L1/L2, so DRAM traffic is one read and one write. Saves mean[N], rstd[N]. Lanes move 16
//    bytes per access when C and the pointers allow (scalar otherwise).
//  backward, one pass over dout and in (C <= 8192): g = dout*w, xhat = (x-mean)*rstd,
//    din = rstd * (g - mean(g) - xhat*mean(g*xhat)), dweight += sum_n dout*xhat,
//    dbias += sum_n dout. A block (<= 512 threads) covers whole rows: thread t owns the 16-byte
//    chunks t, t+threads, ... of every row (kChunks of them, <= 16 columns), keeps w and its
//    columns' dweight/dbias sums in fp32 registers, and walks groups of kRows rows grid-stride
//    (one wave, ~512 threads per SM): load the group's chunks, sum g and g*xhat per row over the
//    block (block_means, one barrier), write din, add the group into the column sums. At the end
//    each block writes its sums as one row of partial[2][blocks][C] (fp32 scratch); a second
//    kernel adds the rows in a fixed order into dweight/dbias (+=). DRAM traffic: dout and in
//    read once, din written once, plus 2 * blocks * C * 4 bytes each way for the partials.
//    Deterministic (fixed grid for a given device and shape, fixed summation order, no atomics).
//    C > 8192 (the column sums would not fit in registers) takes the two-pass path: one warp
//    per row for din, then launch_column_reduce re-reads dout and in for dweight/dbias.
#include <cmath>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row (forward; two-pass backward)

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

// One pass: din and the block's column sums of dout*xhat and dout (see the banner). din may be
// null (no input gradient), partial null (no parameter gradient); chunks = C / kW.
template <typename T, int kW, int kChunks>
__global__ void __launch_bounds__(kRowBlockMaxThreads)
    layernorm_backward_fused_kernel(T* din, float* partial, const T* dout, const T* in,
                                    const T* weight, const T* mean_in, const T* rstd_in,
                                    int64_t rows, int64_t C) {
  constexpr int kRows = row_block_rows(kChunks);
  constexpr int kSums = 2 * kRows;  // per row: mean of g, mean of g*xhat
  __shared__ float red[2][kRowBlockMaxWarps * kSums];
  const int64_t chunks = C / kW, threads = blockDim.x;
  bool owns[kChunks];  // chunk j of this thread lies inside the row
  float w[kChunks][kW], dw[kChunks][kW], db[kChunks][kW];
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    const int64_t q = threadIdx.x + j * threads;
    owns[j] = q < chunks;
    if (owns[j]) load_chunk<kW>(weight + q * kW, w[j]);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      if (!owns[j]) w[j][k] = 0.0f;
      dw[j][k] = 0.0f;
      db[j][k] = 0.0f;
    }
  }
  const int64_t groups = (rows + kRows - 1) / kRows;
  int buffer = 0;
  for (int64_t group = blockIdx.x; group < groups; group += gridDim.x) {
    RowChunk<T, kW> xr[kRows][kChunks], dr[kRows][kChunks];
    float mean[kRows], rstd[kRows];
    bool live[kRows];  // row inside the tensor (the last group may be short)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t n = group * kRows + r;
      live[r] = n < rows;
      mean[r] = live[r] ? load_as_float(mean_in[n]) : 0.0f;
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
    float means[kSums];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float sum_g = 0.0f, sum_g_xhat = 0.0f;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        if (live[r] && owns[j]) {
          float xv[kW], dv[kW];
          unpack_row_chunk<kW, T>(xr[r][j], xv);
          unpack_row_chunk<kW, T>(dr[r][j], dv);
#pragma unroll
          for (int k = 0; k < kW; ++k) {
            const float g = dv[k] * w[j][k];
            sum_g += g;
            sum_g_xhat += g * (xv[k] - mean[r]) * rstd[r];
          }
        }
      }
      means[2 * r] = sum_g;
      means[2 * r + 1] = sum_g_xhat;
    }
    block_means<kSums>(means, red[buffer], static_cast<float>(C));
    buffer ^= 1;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t n = group * kRows + r;
      const float mean_g = means[2 * r], mean_g_xhat = means[2 * r + 1];
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        if (live[r] && owns[j]) {
          float xv[kW], dv[kW], out[kW];
          unpack_row_chunk<kW, T>(xr[r][j], xv);
          unpack_row_chunk<kW, T>(dr[r][j], dv);
#pragma unroll
          for (int k = 0; k < kW; ++k) {
            out[k] = rstd[r] *
                     (dv[k] * w[j][k] - mean_g - (xv[k] - mean[r]) * rstd[r] * mean_g_xhat);
            dw[j][k] += dv[k] * ((xv[k] - mean[r]) * rstd[r]);
            db[j][k] += dv[k];
          }
          if (din != nullptr) store_chunk<kW>(din + n * C + (threadIdx.x + j * threads) * kW, out);
        }
      }
    }
  }
  if (partial == nullptr) return;
  float* pw = partial + static_cast<int64_t>(blockIdx.x) * C;
  float* pb = partial + (static_cast<int64_t>(gridDim.x) + blockIdx.x) * C;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (!owns[j]) continue;
    const int64_t c0 = (threadIdx.x + j * threads) * kW;
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      pw[c0 + k] = dw[j][k];
      pb[c0 + k] = db[j][k];
    }
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

// ---- launchers ---------------------------------------------------------------------------------
// The one-pass backward; false (nothing launched) when C is too large for it. dweight/dbias:
// [C], accumulated (+=), either may be null; din may be null.
template <typename T, int kW>
bool launch_layernorm_backward_fused(CudaBackendState& st, T* din, T* dweight, T* dbias,
                                     const T* dout, const T* in, const T* weight, const T* mean,
                                     const T* rstd, int64_t N, int64_t C) {
  return dispatch_row_blocks<kW>(C / kW, [&]<int kChunks>(int threads) {
    auto kernel = layernorm_backward_fused_kernel<T, kW, kChunks>;
    const int64_t groups = (N + row_block_rows(kChunks) - 1) / row_block_rows(kChunks);
    const int blocks = row_block_count(st, kernel, threads, groups);
    float* partial = nullptr;  // [2][blocks][C]: dweight's sums, then dbias's
    if (dweight != nullptr || dbias != nullptr)
      partial = static_cast<float*>(st.scratch(sizeof(float) * 2 * blocks * C));
    kernel<<<blocks, threads, 0, st.stream()>>>(din, partial, dout, in, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
    if (partial != nullptr)
      launch_column_partials_finalize<T, 2>(st, partial, blocks, C, dweight, dbias);
  });
}

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
  if (N == 0 || (!has_din && !has_dw && !has_db)) return;
  CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dout.dtype(), op, [&]<typename T>() {
    T* dx = has_din ? static_cast<T*>(din.raw()) : nullptr;
    T* dw = has_dw ? static_cast<T*>(dweight.raw()) : nullptr;
    T* db = has_db ? static_cast<T*>(dbias.raw()) : nullptr;
    const T* dy = static_cast<const T*>(dout.raw());
    const T* x = static_cast<const T*>(in.raw());
    const T* w = static_cast<const T*>(weight.raw());
    const T* m = static_cast<const T*>(mean.raw());
    const T* r = static_cast<const T*>(rstd.raw());
    constexpr int kW = Vec16<T>::kSize;
    const bool vector = C % kW == 0 && (dx == nullptr || aligned16(dx)) && aligned16(dy) &&
                        aligned16(x) && aligned16(w);
    const bool fused =
        vector ? launch_layernorm_backward_fused<T, kW>(st, dx, dw, db, dy, x, w, m, r, N, C)
               : launch_layernorm_backward_fused<T, 1>(st, dx, dw, db, dy, x, w, m, r, N, C);
    if (fused) return;
    // Two passes (C > 8192).
    if (dx != nullptr) {
      auto kernel = vector ? layernorm_backward_input_kernel<T, kW>
                           : layernorm_backward_input_kernel<T, 1>;
      kernel<<<ceil_div_u(N, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, st.stream()>>>(
          dx, dy, x, w, m, r, N, C);
      CUDA_CHECK_LAUNCH();
    }
    launch_column_reduce<T, 2>(st, N, C, LayerNormParamGradTerms<T>{dy, x, m, r, C}, dw, db);
  });
}

}  // namespace shardlm::ops::cuda
