// sorted_scatter_add.cu — see sorted_scatter_add.h (algorithm, determinism, scratch).
#include "shardlm/ops/cuda/sorted_scatter_add.h"

#include <cub/device/device_radix_sort.cuh>

#include <bit>
#include <string>

#include "shardlm/ops/cuda/common.cuh"

namespace shardlm::ops::cuda {
namespace {

constexpr int kThreads = 256;      // one column each; whole warps (the segment-end ballots)
constexpr int kRowsInFlight = 8;   // loads issued before they are summed (in order)

// ---- kernels ------------------------------------------------------------------------------------
// keys[n] = tokens[n] - row_start for ids in the shard, else R (sorts after every real key);
// positions[n] = n (the sort is stable, so each key's positions stay ascending).
__global__ void sort_keys_kernel(uint32_t* keys, uint32_t* positions, const int32_t* tokens,
                                 int64_t N, int64_t R, int64_t row_start) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += stride) {
    const int64_t row = static_cast<int64_t>(tokens[n]) - row_start;
    keys[n] = static_cast<uint32_t>(row >= 0 && row < R ? row : R);
    positions[n] = static_cast<uint32_t>(n);
  }
}

// One past the last sorted position holding `key`, for the segment starting at i. Called by
// every lane of a whole warp (32 keys per ballot); every lane gets the same answer.
__device__ __forceinline__ int64_t segment_end(const uint32_t* keys, int64_t i, int64_t N,
                                               uint32_t key) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int64_t j = i + 1;; j += 32) {
    const int64_t k = j + lane;
    const unsigned past = __ballot_sync(0xffffffffu, k >= N || keys[k] != key);
    if (past != 0) return j + __ffs(static_cast<int>(past)) - 1;
  }
}

// grad[key, c] += sum over the key's sorted positions j (in order) of rows[positions[j], c].
// Block (x, y) takes sorted positions x, x + gridDim.x, ... and columns of tile y (and y +
// gridDim.y, ...); it sums the segments that START at its positions, so each grad element is
// written by one thread, once.
template <typename T, typename G>
__global__ void segment_sum_kernel(G* grad, const T* rows, const uint32_t* keys,
                                   const uint32_t* positions, int64_t N, int64_t C,
                                   uint32_t skip_key) {
  const int64_t col_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const uint32_t key = keys[i];  // the same for the whole block: uniform branches below
    if (key == skip_key) return;   // sorted last: no ids of this shard from here on
    if (i > 0 && keys[i - 1] == key) continue;  // inside a segment its start's block sums
    const int64_t end = segment_end(keys, i, N, key);
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C;
         c += col_stride) {
      float sum = 0.0f;
      int64_t j = i;
      for (; j + kRowsInFlight <= end; j += kRowsInFlight) {
        float v[kRowsInFlight];
#pragma unroll
        for (int k = 0; k < kRowsInFlight; ++k)
          v[k] = load_as_float(rows[static_cast<int64_t>(positions[j + k]) * C + c]);
#pragma unroll
        for (int k = 0; k < kRowsInFlight; ++k) sum += v[k];  // row order
      }
      for (; j < end; ++j) sum += load_as_float(rows[static_cast<int64_t>(positions[j]) * C + c]);
      G* g = grad + static_cast<int64_t>(key) * C + c;
      *g = float_to<G>(load_as_float(*g) + sum);
    }
  }
}

// ---- launcher -----------------------------------------------------------------------------------
template <typename T, typename G>
void launch_segment_sum(const CudaBackendState& st, G* grad, const T* rows, const uint32_t* keys,
                        const uint32_t* positions, int64_t N, int64_t C, uint32_t skip_key) {
  // Column tiles in y; enough position blocks in x for ~16 blocks per SM in all.
  const int64_t tiles = std::min<int64_t>((C + kThreads - 1) / kThreads, 65535);
  const int64_t target = static_cast<int64_t>(st.multiprocessor_count()) * 16;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(N, (target + tiles - 1) / tiles));
  const dim3 grid(static_cast<unsigned int>(blocks), static_cast<unsigned int>(tiles));
  segment_sum_kernel<T, G><<<grid, kThreads, 0, st.stream()>>>(grad, rows, keys, positions, N, C,
                                                              skip_key);
  CUDA_CHECK_LAUNCH();
}

size_t aligned256(size_t bytes) { return (bytes + 255) & ~size_t{255}; }

}  // namespace

// ---- entry point --------------------------------------------------------------------------------
void sorted_scatter_add(DeviceContext& ctx, Tensor grad, const Tensor& rows, const Tensor& tokens,
                        int64_t row_start, const char* op) {
  const DType g = grad.dtype(), r = rows.dtype();
  const bool narrow = r == DType::kBF16 || r == DType::kF16;
  if (!(narrow || r == DType::kF32) || (g != r && !(narrow && g == DType::kF32)))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: dwte is " + dtype_name(g) + " for " +
                    dtype_name(r) + " dout; dout must be fp32, bf16 or fp16 and dwte dout's "
                    "dtype or, for bf16/fp16 dout, fp32 (the master gradient; the CUDA backend "
                    "has no fp64)");
  const int64_t N = tokens.numel(), R = grad.rank() > 0 ? grad.size(0) : 0;
  const int64_t C = R > 0 ? grad.numel() / R : 0;
  if (N == 0 || R == 0 || C == 0) return;
  require_rows_fit_grid(N, op);  // cub's item count and the uint32 positions
  if (R > (int64_t{1} << 31) - 1)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: " + std::to_string(R) +
                    " table rows exceed int32 token ids; split the table");
  CudaBackendState& st = cuda_state(ctx);
  const int end_bit = std::bit_width(static_cast<uint32_t>(R));  // keys are <= R
  const int items = static_cast<int>(N);
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), items, 0, end_bit,
      st.stream()));
  // Scratch: keys, positions, sorted keys, sorted positions (N uint32 each), the sort's storage.
  const size_t vec = aligned256(static_cast<size_t>(N) * sizeof(uint32_t));
  char* base = static_cast<char*>(st.scratch(4 * vec + sort_bytes));
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* positions = reinterpret_cast<uint32_t*>(base + vec);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + 2 * vec);
  auto* sorted_positions = reinterpret_cast<uint32_t*>(base + 3 * vec);
  void* sort_storage = base + 4 * vec;

  sort_keys_kernel<<<grid_stride_blocks(st, N, 256), 256, 0, st.stream()>>>(
      keys, positions, static_cast<const int32_t*>(tokens.raw()), N, R, row_start);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, keys, sorted_keys,
                                             positions, sorted_positions, items, 0, end_bit,
                                             st.stream()));
  const auto skip_key = static_cast<uint32_t>(R);
  dispatch_float(r, op, [&]<typename T>() {
    const T* src = static_cast<const T*>(rows.raw());
    if (g == r)
      launch_segment_sum<T, T>(st, static_cast<T*>(grad.raw()), src, sorted_keys,
                               sorted_positions, N, C, skip_key);
    else
      launch_segment_sum<T, float>(st, static_cast<float*>(grad.raw()), src, sorted_keys,
                                   sorted_positions, N, C, skip_key);
  });
}

}  // namespace shardlm::ops::cuda
