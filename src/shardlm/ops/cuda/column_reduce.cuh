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
//
// Row-block pieces, for kernels that make ONE pass over [N, C] and produce a per-row result
// (e.g. a norm's din) and the column sums at the same time (layernorm.cu, rmsnorm.cu):
//  - dispatch_row_blocks<kW>(C / kW, fn): picks kChunks (16-byte chunks per thread per row)
//    and the block size: thread t of a block owns chunks t, t + threads, ... of every row, so a
//    block covers a whole row and keeps its columns' sums in registers (<= 16 fp32 per output).
//    Returns false when C is too large for that (C > 8192): callers fall back to two passes.
//  - row_block_count(st, kernel, threads, row_groups): blocks of a one-wave grid that walks
//    row groups grid-stride; each block writes one row of partial[kOutputs][blocks][C].
//  - block_means<kN>(v, red, count): kN per-thread values summed over the block in a fixed
//    order and divided by count, the same bits in every thread; one barrier per call,
//    alternating two shared buffers.
//  - launch_column_partials_finalize<T, kOutputs>(st, partial, blocks, C, acc0, acc1):
//    acc[c] += sum over b of partial[k][b][c] in a fixed order (32 columns x 16 row-lanes per
//    block, then the 16 lanes folded in order): deterministic, fp32 until the final store.
#pragma once

#include <type_traits>

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

// ---- row-block kernels: one pass, per-row outputs plus column partial sums ----------------------
constexpr int kRowBlockMaxThreads = 512;  // kernels declare __launch_bounds__(kRowBlockMaxThreads)
constexpr int kRowBlockMaxWarps = kRowBlockMaxThreads / 32;
constexpr int kRowBlockPreferredThreads = 256;  // smaller blocks overlap one another's barriers
constexpr int kRowBlockMaxElems = 16;  // columns a thread owns: fp32 registers per column sum
constexpr int kRowBlockTargetThreadsPerSm = 512;  // enough 16-byte loads in flight; more blocks
                                                  // only add partial-sum traffic

// Rows a block takes per iteration (per barrier) when each thread owns kChunks chunks: 4 rows
// of one chunk keep 8 16-byte loads in flight per thread within 128 registers. (Measured on
// an H200 at C=2048/4096, bf16: this beat 1 or 2 rows, 2 rows of 2 chunks, and prefetching
// the next group into registers.)
constexpr int row_block_rows(int chunks) { return chunks >= 2 ? 1 : 4; }

// A 16-byte chunk (kW > 1) or one element (kW == 1), kept in its storage type until used so
// that a thread holds several rows' loads in few registers.
template <typename T, int kW>
using RowChunk = std::conditional_t<kW == 1, T, Vec16<T>>;
template <int kW, typename T>
__device__ __forceinline__ RowChunk<T, kW> load_row_chunk(const T* p) {
  return *reinterpret_cast<const RowChunk<T, kW>*>(p);
}
template <int kW, typename T>
__device__ __forceinline__ void unpack_row_chunk(const RowChunk<T, kW>& c, float (&v)[kW]) {
  if constexpr (kW == 1) {
    v[0] = load_as_float(c);
  } else {
#pragma unroll
    for (int k = 0; k < kW; ++k) v[k] = load_as_float(c.v[k]);
  }
}

// Calls fn.template operator()<kChunks>(threads) with the fewest chunks per thread (a power of
// two, kChunks * kW <= kRowBlockMaxElems) that need <= kRowBlockPreferredThreads threads for
// `chunks_per_row`, else the most chunks allowed if that needs <= kRowBlockMaxThreads; threads
// is a multiple of 32. Returns false (fn not called) when no choice fits.
template <int kW, int kChunks = 1, typename Fn>
bool dispatch_row_blocks(int64_t chunks_per_row, Fn&& fn) {
  static_assert(kChunks * kW <= kRowBlockMaxElems);
  const int64_t threads = ((chunks_per_row + kChunks - 1) / kChunks + 31) / 32 * 32;
  constexpr bool kLast = kChunks * 2 * kW > kRowBlockMaxElems;
  if (threads <= kRowBlockPreferredThreads || (kLast && threads <= kRowBlockMaxThreads)) {
    fn.template operator()<kChunks>(static_cast<int>(threads));
    return true;
  }
  if constexpr (kLast) {
    return false;
  } else {
    return dispatch_row_blocks<kW, kChunks * 2>(chunks_per_row, fn);
  }
}

// Grid size for a row-block kernel: as many blocks as are resident at once (one wave, capped
// at ~kRowBlockTargetThreadsPerSm threads per SM, at least 2 blocks per SM where they fit),
// never more than there are row groups.
template <typename Kernel>
int row_block_count(const CudaBackendState& st, Kernel kernel, int threads, int64_t row_groups) {
  int resident = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, 0));
  const int per_sm =
      std::max(1, std::min(resident, std::max(2, kRowBlockTargetThreadsPerSm / threads)));
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(row_groups, static_cast<int64_t>(st.multiprocessor_count()) * per_sm)));
}

// Halving rounds of warp_sum_scatter: lanes whose bit kOffset is set keep the upper half of
// the kLive live values, the others the lower half, each adding its partner's copy.
template <int kLive, int kOffset, int kN>
__device__ __forceinline__ void warp_halve(float (&a)[kN], int lane) {
  if constexpr (kLive > 1) {
    constexpr int kHalf = kLive / 2;
    const bool upper = (lane & kOffset) != 0;
#pragma unroll
    for (int j = 0; j < kHalf; ++j) {
      const float keep = upper ? a[j + kHalf] : a[j];
      const float give = upper ? a[j] : a[j + kHalf];
      a[j] = keep + __shfl_xor_sync(0xffffffffu, give, kOffset);
    }
    warp_halve<kHalf, kOffset / 2>(a, lane);
  }
}
// Sums each of kN values (kN a power of two <= 32) over the warp with kN - 1 + log2(32 / kN)
// shuffles instead of 5 * kN: returns the total of value lane / (32 / kN) (the same bits in
// all 32 / kN lanes that hold it). `a` is clobbered.
template <int kN>
__device__ __forceinline__ float warp_sum_scatter(float (&a)[kN]) {
  static_assert(kN >= 1 && kN <= 32 && (kN & (kN - 1)) == 0, "kN: a power of two <= 32");
  const int lane = threadIdx.x & 31;
  warp_halve<kN, 16>(a, lane);
#pragma unroll
  for (int o = 16 / kN; o > 0; o >>= 1) a[0] += __shfl_xor_sync(0xffffffffu, a[0], o);
  return a[0];
}

// v[i] <- (sum of v[i] over the block) / count, for blockDim.x a multiple of 32 and
// <= kRowBlockMaxThreads; every thread gets the same bits (warps added in order 0, 1, ...,
// then one division, done by lane i for value i, so a warp divides once instead of kN
// times). `red` is shared memory of kRowBlockMaxWarps * kN floats. One barrier per call: a
// caller alternates between two buffers, since a buffer is rewritten only after the next
// call's barrier, which every thread reaches after its reads of this call.
template <int kN>
__device__ __forceinline__ void block_means(float (&v)[kN], float* red, float count) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  constexpr int kLanesPerValue = 32 / kN;
  const float mine = warp_sum_scatter<kN>(v);
  if (lane % kLanesPerValue == 0) red[warp * kN + lane / kLanesPerValue] = mine;
  __syncthreads();
  float total = 0.0f;
  if (lane < kN)
    for (int w = 0; w < nwarps; ++w) total += red[w * kN + lane];
  const float mean = total / count;
#pragma unroll
  for (int i = 0; i < kN; ++i) v[i] = __shfl_sync(0xffffffffu, mean, i);
}

constexpr int kFinalizeRowLanes = 16;

// partial: [kOutputs][blocks][cols] fp32; acc0/acc1: [cols] in dtype T, accumulated (+=); a
// null acc is skipped. grid (ceil(cols/32), kOutputs), block (32, kFinalizeRowLanes).
template <typename T, int kOutputs>
__global__ void column_partials_finalize_kernel(const float* partial, int blocks, int64_t cols,
                                                T* acc0, T* acc1) {
  __shared__ float fold[kFinalizeRowLanes][33];
  T* acc = blockIdx.y == 0 ? acc0 : acc1;
  if (acc == nullptr) return;  // the whole block
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const float* p = partial + static_cast<int64_t>(blockIdx.y) * blocks * cols;
  float s = 0.0f;
  if (c < cols)
    for (int b = threadIdx.y; b < blocks; b += kFinalizeRowLanes)
      s += p[static_cast<int64_t>(b) * cols + c];
  fold[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < kFinalizeRowLanes; ++y) total += fold[y][threadIdx.x];
    acc[c] = float_to<T>(load_as_float(acc[c]) + total);
  }
}

template <typename T, int kOutputs>
void launch_column_partials_finalize(CudaBackendState& st, const float* partial, int blocks,
                                     int64_t cols, T* acc0, T* acc1) {
  static_assert(kOutputs == 1 || kOutputs == 2);
  if (cols == 0 || (acc0 == nullptr && (kOutputs == 1 || acc1 == nullptr))) return;
  const dim3 grid(ceil_div_u(cols, 32), kOutputs);
  column_partials_finalize_kernel<T, kOutputs>
      <<<grid, dim3(32, kFinalizeRowLanes), 0, st.stream()>>>(partial, blocks, cols, acc0,
                                                              kOutputs == 2 ? acc1 : nullptr);
  CUDA_CHECK_LAUNCH();
}


// ---- chunked column sums: kW columns (one 16-byte chunk) per thread -----------------------------
// launch_column_reduce reads one element per thread per row: a warp moves 64 bytes of bf16 per
// load and the reduction ran at ~1/3 of the copy bandwidth (0.4 ms for the 16384 x 8192 bias
// gradient on an H100). Here a thread owns kW = 16 / sizeof(T) consecutive columns and issues
// kChunkRows rows' loads before using any, so a warp reads 512 contiguous bytes per row with
// several rows in flight. The sums are fp32 and the order is fixed (rows y, y + 8*S, ... per
// thread; the 8 row-lanes folded in order; slices folded in order by column_finalize_kernel):
// deterministic.
//
// A Term describes one reduction, with kW columns per call:
//   struct Term {
//     static constexpr int kW = ...;            // 1, or Vec16<T>::kSize
//     struct Loaded { ... };                     // the raw chunk(s) of row n (registers)
//     __device__ Loaded load(int64_t n, int64_t c) const;
//     __device__ void add(const Loaded&, int64_t n, int64_t c, float (&s0)[kW], float (&s1)[kW]) const;
//   };
// add may also store per-element results of row n (GELU's backward writes dpre): each
// (n, c .. c + kW - 1) is loaded and added by exactly one thread, exactly once.
constexpr int kChunkRows = 4;
constexpr int kChunkRowLanes = 8;

template <int kOutputs, typename Term>
__global__ void __launch_bounds__(32 * kChunkRowLanes)
    column_chunk_partial_sums_kernel(int64_t rows, int64_t cols, Term term, float* partial) {
  constexpr int kW = Term::kW;
  __shared__ float fold[kOutputs][kChunkRowLanes][kW][32];
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * 32 + x) * kW;
  float s0[kW] = {}, s1[kW] = {};
  if (c < cols) {  // cols is a multiple of kW: the whole chunk is in range
    const int64_t step = static_cast<int64_t>(gridDim.y) * kChunkRowLanes;
    int64_t n = static_cast<int64_t>(blockIdx.y) * kChunkRowLanes + y;
    for (; n + (kChunkRows - 1) * step < rows; n += kChunkRows * step) {
      typename Term::Loaded loaded[kChunkRows];
#pragma unroll
      for (int r = 0; r < kChunkRows; ++r) loaded[r] = term.load(n + r * step, c);
#pragma unroll
      for (int r = 0; r < kChunkRows; ++r) term.add(loaded[r], n + r * step, c, s0, s1);
    }
    for (; n < rows; n += step) term.add(term.load(n, c), n, c, s0, s1);
  }
#pragma unroll
  for (int j = 0; j < kW; ++j) {
    fold[0][y][j][x] = s0[j];
    if constexpr (kOutputs == 2) fold[1][y][j][x] = s1[j];
  }
  __syncthreads();
  for (int v = y * 32 + x; v < kOutputs * kW * 32; v += 32 * kChunkRowLanes) {
    const int k = v / (kW * 32), j = (v / 32) % kW, lane = v % 32;
    const int64_t col = (static_cast<int64_t>(blockIdx.x) * 32 + lane) * kW + j;
    if (col >= cols) continue;
    float total = 0.0f;
#pragma unroll
    for (int r = 0; r < kChunkRowLanes; ++r) total += fold[k][r][j][lane];
    partial[(static_cast<int64_t>(k) * gridDim.y + blockIdx.y) * cols + col] = total;
  }
}

// acc0/acc1: [cols] in dtype T, accumulated (+=); either may be null. make_term is a template
// lambda []<int kW>() { return SomeTerm<T, kW>{...}; }; vector_ok says every pointer the term
// reads or writes is 16-byte aligned (cols % kW is checked here), else kW = 1.
template <typename T, int kOutputs, typename MakeTerm>
void launch_column_reduce_chunked(CudaBackendState& st, int64_t rows, int64_t cols,
                                  bool vector_ok, MakeTerm&& make_term, T* acc0, T* acc1) {
  if (cols == 0 || rows == 0 || (acc0 == nullptr && acc1 == nullptr)) return;
  auto launch = [&]<int kW>() {
    const auto term = make_term.template operator()<kW>();
    using Term = std::decay_t<decltype(term)>;
    static_assert(Term::kW == kW);
    const auto kernel = column_chunk_partial_sums_kernel<kOutputs, Term>;
    const int64_t col_blocks = (cols / kW + 31) / 32;
    int resident = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel,
                                                             32 * kChunkRowLanes, 0));
    const int64_t target_blocks =
        static_cast<int64_t>(st.multiprocessor_count()) * std::max(1, resident);
    int64_t slices = (target_blocks + col_blocks - 1) / col_blocks;
    slices = std::max<int64_t>(
        1, std::min<int64_t>({slices, (rows + kChunkRowLanes - 1) / kChunkRowLanes, 65535}));
    float* partial = static_cast<float*>(st.scratch(sizeof(float) * kOutputs * slices * cols));
    const dim3 grid(static_cast<unsigned int>(col_blocks), static_cast<unsigned int>(slices));
    kernel<<<grid, dim3(32, kChunkRowLanes), 0, st.stream()>>>(rows, cols, term, partial);
    CUDA_CHECK_LAUNCH();
    column_finalize_kernel<T, kOutputs><<<ceil_div_u(cols, 256), 256, 0, st.stream()>>>(
        partial, static_cast<int>(slices), cols, acc0, acc1);
    CUDA_CHECK_LAUNCH();
  };
  constexpr int kVec = Vec16<T>::kSize;
  if (vector_ok && cols % kVec == 0)
    launch.template operator()<kVec>();
  else
    launch.template operator()<1>();
}

}  // namespace shardlm::ops::cuda
