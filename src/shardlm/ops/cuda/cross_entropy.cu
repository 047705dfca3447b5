// cross_entropy.cu — fused softmax cross-entropy over the (padded) vocabulary, row by row.
//
// Algorithms (one 512-thread block per row n of logits[N,V]; nothing but the row's scalars is
// ever held in fp32 outside registers):
//  forward: each thread keeps an online (max, sum exp) over its strided share of the row
//    (16-byte vector loads when V and the pointer allow), the block merges the pairs, and
//    lse = max + log(sum), loss = lse - x[target]. One read of the logits.
//  backward: dlogits[n,c] = dloss[n] * (exp(x - lse) - [c == target]). For fp32 the saved lse is
//    used; for bf16/fp16 the saved lse is rounded to 8/11 bits, which would put a ~1% error on
//    every probability, so the kernel recomputes lse in fp32 from the row first (a second read
//    of the row, mostly from L2). One write of dlogits.
// A target outside [0,V) makes the row's loss NaN (forward) and contributes no one-hot term
// (backward), so the bad id shows up in the loss instead of corrupting memory.
#include <cmath>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kThreads = 512;

// ---- kernels ------------------------------------------------------------------------------------
struct MaxSum {
  float max;
  float sum;  // sum of exp(x - max)
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}
__device__ __forceinline__ void absorb(MaxSum& acc, float x) {
  if (x > acc.max) {
    acc.sum = acc.sum * __expf(acc.max - x) + 1.0f;
    acc.max = x;
  } else {
    acc.sum += __expf(x - acc.max);
  }
}

// Calls fn(c, x) for this thread's share of row[0, V): 16-byte vectors when kVector.
template <typename T, bool kVector, typename Fn>
__device__ __forceinline__ void for_each_in_row(const T* row, int64_t V, Fn&& fn) {
  if constexpr (kVector) {
    constexpr int kW = Vec16<T>::kSize;
    for (int64_t v = threadIdx.x; v < V / kW; v += blockDim.x) {
      const Vec16<T> chunk = reinterpret_cast<const Vec16<T>*>(row)[v];
#pragma unroll
      for (int k = 0; k < kW; ++k) fn(v * kW + k, load_as_float(chunk.v[k]));
    }
  } else {
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) fn(c, load_as_float(row[c]));
  }
}

// log(sum(exp(row))) computed by the whole block; every thread gets it.
template <typename T, bool kVector>
__device__ float row_logsumexp(const T* row, int64_t V) {
  __shared__ MaxSum partial[32];
  MaxSum acc{-INFINITY, 0.0f};
  for_each_in_row<T, kVector>(row, V, [&](int64_t, float x) { absorb(acc, x); });
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.max, o),
                       __shfl_xor_sync(0xffffffffu, acc.sum, o)};
    acc = merge(acc, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  MaxSum total = partial[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) total = merge(total, partial[w]);
  return total.max + logf(total.sum);
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(T* losses, T* lse_out, const T* logits, const int32_t* targets,
                                 int64_t V) {
  const int64_t n = blockIdx.x;
  const T* row = logits + n * V;
  const float lse = row_logsumexp<T, kVector>(row, V);
  if (threadIdx.x == 0) {
    const int32_t t = targets[n];
    const float loss = (t >= 0 && t < V) ? lse - load_as_float(row[t]) : NAN;
    losses[n] = float_to<T>(loss);
    lse_out[n] = float_to<T>(lse);
  }
}

template <typename T, bool kVector, bool kRecomputeLse>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(T* dlogits, const T* dlosses, const T* logits,
                                  const int32_t* targets, const T* lse_in, int64_t V) {
  const int64_t n = blockIdx.x;
  const T* row = logits + n * V;
  float lse;
  if constexpr (kRecomputeLse)
    lse = row_logsumexp<T, kVector>(row, V);
  else
    lse = load_as_float(lse_in[n]);
  const float dloss = load_as_float(dlosses[n]);
  const int64_t t = targets[n];
  T* drow = dlogits + n * V;
  if constexpr (kVector) {
    constexpr int kW = Vec16<T>::kSize;
    for (int64_t v = threadIdx.x; v < V / kW; v += blockDim.x) {
      const Vec16<T> chunk = reinterpret_cast<const Vec16<T>*>(row)[v];
      Vec16<T> out;
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        const float p = __expf(load_as_float(chunk.v[k]) - lse);
        out.v[k] = float_to<T>(dloss * (p - (v * kW + k == t ? 1.0f : 0.0f)));
      }
      reinterpret_cast<Vec16<T>*>(drow)[v] = out;
    }
  } else {
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
      const float p = __expf(load_as_float(row[c]) - lse);
      drow[c] = float_to<T>(dloss * (p - (c == t ? 1.0f : 0.0f)));
    }
  }
}

template <typename T>
bool rows_vectorizable(const void* a, const void* b, int64_t V) {
  return aligned16(a) && aligned16(b) && (V * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

void check_rows(const DeviceContext& ctx, const Tensor& logits, const Tensor& targets,
                const char* op, int64_t& N, int64_t& V) {
  require_on_device(ctx, logits, op, "logits");
  require_on_device(ctx, targets, op, "targets");
  require_dtype(targets, DType::kI32, op, "targets");
  V = logits.size(logits.rank() - 1);
  N = V == 0 ? 0 : logits.numel() / V;
  require_numel(targets, N, op, "targets");
  require_rows_fit_grid(N, op);
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void cross_entropy_forward(DeviceContext& ctx, Tensor losses, Tensor lse, const Tensor& logits,
                           const Tensor& targets) {
  const char* op = "cross_entropy_forward";
  int64_t N = 0, V = 0;
  check_rows(ctx, logits, targets, op, N, V);
  require_on_device(ctx, losses, op, "losses");
  require_on_device(ctx, lse, op, "lse");
  require_same_dtype(logits, losses, op, "logits", "losses");
  require_same_dtype(logits, lse, op, "logits", "lse");
  require_numel(losses, N, op, "losses");
  require_numel(lse, N, op, "lse");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(logits.dtype(), op, [&]<typename T>() {
    const T* x = static_cast<const T*>(logits.raw());
    const auto launch = [&]<bool kVector>() {
      cross_entropy_forward_kernel<T, kVector><<<static_cast<unsigned int>(N), kThreads, 0,
                                                 st.stream()>>>(
          static_cast<T*>(losses.raw()), static_cast<T*>(lse.raw()), x,
          static_cast<const int32_t*>(targets.raw()), V);
    };
    if (rows_vectorizable<T>(x, x, V))
      launch.template operator()<true>();
    else
      launch.template operator()<false>();
    CUDA_CHECK_LAUNCH();
  });
}

void cross_entropy_backward(DeviceContext& ctx, Tensor dlogits, const Tensor& dlosses,
                            const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  const char* op = "cross_entropy_backward";
  int64_t N = 0, V = 0;
  check_rows(ctx, logits, targets, op, N, V);
  require_on_device(ctx, dlogits, op, "dlogits");
  require_on_device(ctx, dlosses, op, "dlosses");
  require_on_device(ctx, lse, op, "lse");
  require_same_dtype(logits, dlogits, op, "logits", "dlogits");
  require_same_dtype(logits, dlosses, op, "logits", "dlosses");
  require_same_dtype(logits, lse, op, "logits", "lse");
  require_numel(dlogits, logits.numel(), op, "dlogits");
  require_numel(dlosses, N, op, "dlosses");
  require_numel(lse, N, op, "lse");
  if (N == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(logits.dtype(), op, [&]<typename T>() {
    constexpr bool kRecompute = !std::is_same_v<T, float>;
    const T* x = static_cast<const T*>(logits.raw());
    const auto launch = [&]<bool kVector>() {
      cross_entropy_backward_kernel<T, kVector, kRecompute>
          <<<static_cast<unsigned int>(N), kThreads, 0, st.stream()>>>(
              static_cast<T*>(dlogits.raw()), static_cast<const T*>(dlosses.raw()), x,
              static_cast<const int32_t*>(targets.raw()), static_cast<const T*>(lse.raw()), V);
    };
    if (rows_vectorizable<T>(x, dlogits.raw(), V))
      launch.template operator()<true>();
    else
      launch.template operator()<false>();
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace shardlm::ops::cuda
