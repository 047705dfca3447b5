// column_reduce.cuh — parameter-gradient reductions over rows: acc0[c] += sum_n f0(n, c) and
// (optionally) acc1[c] += sum_n f1(n, c), for the weight/bias gradients of LayerNorm, RMSNorm
// and linear's bias. Deterministic (fixed split, fixed summation order) and fp32 throughout.
//
// Algorithm, two kernels:
//  1. grid (ceil(C/32), S): block (32, 8) sums its 32 columns over the rows n = y, y + 8*S, ...
//     of its slice y (coalesced along C), folds the 8 row-lanes in shared memory and writes
//     partial[k][y][c] (fp32, in the context's scratch: 2*S*C floats).
//  2. one thread per column adds the S partials in order and accumulates into acc (dtype T).
// S is chosen so the first kernel has ~4 blocks per SM.
//
//   struct LnGrad { ... __device__ float2 operator()(int64_t n, int64_t c) const; };
//   launch_column_reduce<T, 2>(st, N, C, LnGrad{...}, dweight_ptr, dbias_ptr);
#pragma once

#include "shardlm/ops/cuda/common.cuh"

namespace shardlm::ops::cuda {

template <int kOutputs, typename ValueFn>
__global__ void column_partial_sums_kernel(int64_t rows, int64_t cols, ValueFn value,
                                           float* partial) {
  __shared__ float fold[kOutputs][8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s0 = 0.0f, s1 = 0.0f;
  if (c < cols) {
    for (int64_t n = static_cast<int64_t>(blockIdx.y) * 8 + threadIdx.y; n < rows;
         n += static_cast<int64_t>(gridDim.y) * 8) {
      const float2 v = value(n, c);
      s0 += v.x;
      if constexpr (kOutputs == 2) s1 += v.y;
    }
  }
  fold[0][threadIdx.y][threadIdx.x] = s0;
  if constexpr (kOutputs == 2) fold[1][threadIdx.y][threadIdx.x] = s1;
  __syncthreads();
  if (threadIdx.y < kOutputs && c < cols) {
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < 8; ++y) total += fold[threadIdx.y][y][threadIdx.x];
    partial[(static_cast<int64_t>(threadIdx.y) * gridDim.y + blockIdx.y) * cols + c] = total;
  }
}

template <typename T, int kOutputs>
__global__ void column_finalize_kernel(const float* partial, int slices, int64_t cols, T* acc0,
                                       T* acc1) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s0 = 0.0f, s1 = 0.0f;
  for (int y = 0; y < slices; ++y) {
    s0 += partial[static_cast<int64_t>(y) * cols + c];
    if constexpr (kOutputs == 2) s1 += partial[(static_cast<int64_t>(slices) + y) * cols + c];
  }
  if (acc0 != nullptr) acc0[c] = float_to<T>(load_as_float(acc0[c]) + s0);
  if constexpr (kOutputs == 2) {
    if (acc1 != nullptr) acc1[c] = float_to<T>(load_as_float(acc1[c]) + s1);
  }
}

// acc0/acc1: [cols] in dtype T, accumulated (+=); either may be null (skipped).
template <typename T, int kOutputs, typename ValueFn>
void launch_column_reduce(CudaBackendState& st, int64_t rows, int64_t cols, ValueFn value,
                          T* acc0, T* acc1) {
  if (cols == 0 || (acc0 == nullptr && acc1 == nullptr)) return;
  const int64_t col_blocks = (cols + 31) / 32;
  const int64_t target_blocks = static_cast<int64_t>(st.multiprocessor_count()) * 4;
  int64_t slices = (target_blocks + col_blocks - 1) / col_blocks;
  slices = std::max<int64_t>(1, std::min<int64_t>({slices, (rows + 7) / 8, 65535}));
  float* partial = static_cast<float*>(st.scratch(sizeof(float) * kOutputs * slices * cols));
  const dim3 grid(static_cast<unsigned int>(col_blocks), static_cast<unsigned int>(slices));
  column_partial_sums_kernel<kOutputs><<<grid, dim3(32, 8), 0, st.stream()>>>(rows, cols, value,
                                                                              partial);
  CUDA_CHECK_LAUNCH();
  column_finalize_kernel<T, kOutputs><<<ceil_div_u(cols, 256), 256, 0, st.stream()>>>(
      partial, static_cast<int>(slices), cols, acc0, acc1);
  CUDA_CHECK_LAUNCH();
}

}  // namespace shardlm::ops::cuda
