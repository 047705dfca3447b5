// elementwise_map.cuh — one kernel shape for every same-dtype elementwise op:
// out[i] = op(a[i], b[i]) (or op(a[i]) when b is null), computed in fp32.
//
// Each thread moves 16 bytes per operand per iteration (8 bf16/fp16 or 4 fp32 elements) in a
// grid-stride loop when all pointers are 16-byte aligned; the last n % vector elements, or
// everything when a pointer is misaligned, take a scalar loop. Memory-bound: the floor is
// (arity + 1) * n * sizeof(T) bytes over bandwidth.
//
// Op is a functor struct with `__device__ float operator()(float a, float b) const` (no
// extended lambdas: the build does not pass --extended-lambda).
//
//   struct AddOp { __device__ float operator()(float x, float y) const { return x + y; } };
//   launch_map<T>(st, n, out, a, b, AddOp{});
#pragma once

#include "shardlm/ops/cuda/common.cuh"

namespace shardlm::ops::cuda {

template <typename T, bool kVector, typename Op>
__global__ void map_kernel(T* out, const T* a,
                           const T* b, int64_t n, Op op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if constexpr (kVector) {
    constexpr int kW = Vec16<T>::kSize;
    const int64_t nvec = n / kW;
    for (int64_t v = tid; v < nvec; v += stride) {
      const Vec16<T> va = reinterpret_cast<const Vec16<T>*>(a)[v];
      Vec16<T> vb;
      if (b != nullptr) vb = reinterpret_cast<const Vec16<T>*>(b)[v];
      Vec16<T> vo;
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        const float y = b != nullptr ? load_as_float(vb.v[k]) : 0.0f;
        vo.v[k] = float_to<T>(op(load_as_float(va.v[k]), y));
      }
      reinterpret_cast<Vec16<T>*>(out)[v] = vo;
    }
    scalar_begin = nvec * kW;
  }
  for (int64_t i = scalar_begin + tid; i < n; i += stride) {
    const float y = b != nullptr ? load_as_float(b[i]) : 0.0f;
    out[i] = float_to<T>(op(load_as_float(a[i]), y));
  }
}

// out/a/b: n elements each (b may be null for unary ops; out may alias a or b).
template <typename T, typename Op>
void launch_map(const CudaBackendState& st, int64_t n, T* out, const T* a, const T* b, Op op) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  const bool vector = aligned16(out) && aligned16(a) && (b == nullptr || aligned16(b));
  const int64_t work = vector ? (n + Vec16<T>::kSize - 1) / Vec16<T>::kSize : n;
  const unsigned int blocks = grid_stride_blocks(st, work, kThreads);
  if (vector)
    map_kernel<T, true><<<blocks, kThreads, 0, st.stream()>>>(out, a, b, n, op);
  else
    map_kernel<T, false><<<blocks, kThreads, 0, st.stream()>>>(out, a, b, n, op);
  CUDA_CHECK_LAUNCH();
}

}  // namespace shardlm::ops::cuda
