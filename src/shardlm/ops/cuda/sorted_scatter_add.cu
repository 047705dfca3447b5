// sorted_scatter_add.cu — see sorted_scatter_add.h (algorithm, summation order, scratch).
#include "shardlm/ops/cuda/sorted_scatter_add.h"

#include <cub/device/device_radix_sort.cuh>

#include <bit>
#include <string>

#include "shardlm/ops/cuda/common.cuh"

namespace shardlm::ops::cuda {
namespace {

constexpr int kThreads = 256;      // one column each; whole warps (the segment-end ballots)
constexpr int kRowsInFlight = 8;   // loads issued before they are summed (in order)
constexpr int64_t kChunk = kSortedScatterAddChunkRows;  // L
static_assert(kChunk % 32 == 0, "a short segment's end is found by whole-warp ballots");

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

// load(0) + load(1) + ... + load(count - 1) in fp32 from 0, in that order, with kRowsInFlight
// loads issued before they are added.
template <typename Load>
__device__ __forceinline__ float ordered_sum(int64_t count, Load load) {
  float sum = 0.0f;
  int64_t j = 0;
  for (; j + kRowsInFlight <= count; j += kRowsInFlight) {
    float v[kRowsInFlight];
#pragma unroll
    for (int k = 0; k < kRowsInFlight; ++k) v[k] = load(j + k);
#pragma unroll
    for (int k = 0; k < kRowsInFlight; ++k) sum += v[k];  // in order
  }
  for (; j < count; ++j) sum += load(j);
  return sum;
}

// Column c of the rows at sorted positions [begin, end), summed in row order (fp32, from 0).
template <typename T>
__device__ __forceinline__ float sum_rows(const T* rows, const uint32_t* positions, int64_t begin,
                                          int64_t end, int64_t C, int64_t c) {
  return ordered_sum(end - begin, [&](int64_t j) {
    return load_as_float(rows[static_cast<int64_t>(positions[begin + j]) * C + c]);
  });
}

// One past the last sorted position holding `key`, for the segment starting at i, if it has at
// most L rows; -1 if it is longer (positions i + 1 .. i + L all hold the key). Ballots over those
// L keys, 32 at a time, so the common short segment costs no extra load. Called by every lane of
// a whole warp; every lane gets the same answer.
__device__ __forceinline__ int64_t short_segment_end(const uint32_t* keys, int64_t i, int64_t N,
                                                     uint32_t key) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int64_t j = i + 1; j <= i + kChunk; j += 32) {
    const int64_t k = j + lane;
    const unsigned past = __ballot_sync(0xffffffffu, k >= N || keys[k] != key);
    if (past != 0) return j + __ffs(static_cast<int>(past)) - 1;
  }
  return -1;
}

// One past the last sorted position holding `key`, for a segment starting at i with more than L
// rows (keys[i + L] == key): a binary search past them.
__device__ __forceinline__ int64_t long_segment_end(const uint32_t* keys, int64_t i, int64_t N,
                                                    uint32_t key) {
  int64_t lo = i + kChunk + 1, hi = N;  // keys[lo - 1] == key; the end is in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] == key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// A segment starting at i is long (more than L rows) when position i + L still holds its key.
__device__ __forceinline__ bool is_long_segment(const uint32_t* keys, int64_t i, int64_t N,
                                                uint32_t key) {
  return i + kChunk < N && keys[i + kChunk] == key;
}

// First sorted position holding `key`, for a position q that holds it. Called by every thread of
// the block (it synchronises); every thread gets the same answer. The block counts the key among
// the L positions up to q (sorted keys: exactly those from the segment start on); only when all
// L hold it (a segment of at least L rows) does it binary-search the keys before them.
__device__ __forceinline__ int64_t segment_start(const uint32_t* keys, int64_t q, uint32_t key) {
  int64_t count = 0;
  for (int64_t j0 = 0; j0 < kChunk; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x, p = q - j;
    count += __syncthreads_count(j < kChunk && p >= 0 && keys[p] == key);
  }
  if (count < kChunk) return q + 1 - count;
  int64_t lo = 0, hi = q + 1 - kChunk;  // keys[hi] == key; the start is in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The segment holding sorted position q = t·L, for the kernels that walk L-tiles: kStop when q
// holds no id of this shard (sorted last: none follow), kShort for a segment of at most L rows,
// else kLong, with its key and start. Called by every thread of the block (segment_start
// synchronises); every thread gets the same answer, so the callers' branches stay uniform.
struct TileSegment {
  enum Kind { kStop, kShort, kLong } kind;
  uint32_t key;
  int64_t start;
};
__device__ __forceinline__ TileSegment tile_segment(const uint32_t* keys, int64_t q, int64_t N,
                                                    uint32_t skip_key) {
  const uint32_t key = keys[q];
  if (key == skip_key) return {TileSegment::kStop, key, 0};
  const int64_t start = segment_start(keys, q, key);
  return {is_long_segment(keys, start, N, key) ? TileSegment::kLong : TileSegment::kShort, key,
          start};
}

// partials[t, c] = column c of the chunk holding sorted position t·L, summed in row order, when
// that chunk is a full one (L rows) of a segment longer than L; otherwise nothing is written
// (shorter segments and the rest rows of longer ones are summed by the segment kernels). A segment
// starting at s has its chunk k at [s + kL, s + (k+1)L), holding exactly one multiple of L:
// (ceil(s/L) + k)·L. So each full chunk is summed by one block, into row ceil(s/L) + k.
// Block (x, y) takes tiles x, x + gridDim.x, ... and columns of tile y (and y + gridDim.y, ...).
template <typename T>
__global__ void chunk_sum_kernel(float* partials, const T* rows, const uint32_t* keys,
                                 const uint32_t* positions, int64_t N, int64_t C,
                                 uint32_t skip_key) {
  const int64_t tiles = (N + kChunk - 1) / kChunk;
  const int64_t col_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t q = t * kChunk;
    const auto [kind, key, start] = tile_segment(keys, q, N, skip_key);
    if (kind == TileSegment::kStop) return;
    if (kind == TileSegment::kShort) continue;  // at most L rows: no full chunk
    const int64_t chunk = start + (q - start) / kChunk * kChunk;  // the chunk holding q
    if (chunk + kChunk > N || keys[chunk + kChunk - 1] != key) continue;  // the rest rows
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C;
         c += col_stride)
      partials[t * C + c] = sum_rows(rows, positions, chunk, chunk + kChunk, C, c);
  }
}

// grad[key, c] += the sum of the key's rows in row order, for every segment of at most L rows
// (longer ones are long_segment_sum_kernel's). Block (x, y) takes sorted positions x, x +
// gridDim.x, ... and columns of tile y (and y + gridDim.y, ...); it sums the segments that START
// at its positions, so each grad element is written by one thread, once.
template <typename T, typename G>
__global__ void __launch_bounds__(kThreads, 2048 / kThreads)  // full occupancy: 32 registers
    short_segment_sum_kernel(G* grad, const T* rows, const uint32_t* keys,
                             const uint32_t* positions, int64_t N, int64_t C, uint32_t skip_key) {
  const int64_t col_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const uint32_t key = keys[i];  // the same for the whole block: uniform branches below
    if (key == skip_key) return;   // sorted last: no ids of this shard from here on
    if (i > 0 && keys[i - 1] == key) continue;  // inside a segment its start's block sums
    const int64_t end = short_segment_end(keys, i, N, key);
    if (end < 0) continue;  // longer than L
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C;
         c += col_stride) {
      const float sum = sum_rows(rows, positions, i, end, C, c);
      G* g = grad + static_cast<int64_t>(key) * C + c;
      *g = float_to<G>(load_as_float(*g) + sum);
    }
  }
}

// grad[key, c] += the chunked sum of every segment longer than L: its full chunks' partials
// (written by chunk_sum_kernel, which ran before on the stream) in chunk order, then its rest
// rows. Such a segment holds at least one multiple of L; the block of the L-tile starting at the
// FIRST one sums it (so once), so this kernel walks N / L tiles, not N positions: it costs a few
// microseconds when no segment is long. Block (x, y): tiles x, x + gridDim.x, ..., column tile y.
template <typename T, typename G>
__global__ void long_segment_sum_kernel(G* grad, const T* rows, const float* partials,
                                        const uint32_t* keys, const uint32_t* positions,
                                        int64_t N, int64_t C, uint32_t skip_key) {
  const int64_t tiles = (N + kChunk - 1) / kChunk;
  const int64_t col_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t q = t * kChunk;
    const auto [kind, key, start] = tile_segment(keys, q, N, skip_key);
    if (kind == TileSegment::kStop) return;
    if (kind == TileSegment::kShort) continue;  // the short kernel's
    if (q - start >= kChunk) continue;  // an earlier tile start lies in the segment: its block's
    const int64_t end = long_segment_end(keys, start, N, key);
    const int64_t full = (end - start) / kChunk;          // chunks in partials
    const int64_t first = t;                              // partials row of chunk 0: ceil(start/L)
    const int64_t rest = start + full * kChunk;           // the rows summed here: [rest, end)
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C;
         c += col_stride) {
      float sum = ordered_sum(full, [&](int64_t k) { return partials[(first + k) * C + c]; });
      if (rest < end) sum += sum_rows(rows, positions, rest, end, C, c);
      G* g = grad + static_cast<int64_t>(key) * C + c;
      *g = float_to<G>(load_as_float(*g) + sum);
    }
  }
}

// ---- launchers ----------------------------------------------------------------------------------
// Column tiles in y; enough blocks in x (at most `work`, the x loop's items) for ~16 blocks per
// SM in all.
dim3 scatter_grid(const CudaBackendState& st, int64_t work, int64_t C) {
  const int64_t tiles = std::min<int64_t>((C + kThreads - 1) / kThreads, 65535);
  const int64_t target = static_cast<int64_t>(st.multiprocessor_count()) * 16;
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(work, (target + tiles - 1) / tiles));
  return dim3(static_cast<unsigned int>(blocks), static_cast<unsigned int>(tiles));
}

template <typename T, typename G>
void launch_sums(const CudaBackendState& st, G* grad, const T* rows, float* partials,
                 const uint32_t* keys, const uint32_t* positions, int64_t N, int64_t C,
                 uint32_t skip_key) {
  if (N > kChunk) {  // else no segment is longer than L
    chunk_sum_kernel<T><<<scatter_grid(st, (N + kChunk - 1) / kChunk, C), kThreads, 0,
                          st.stream()>>>(partials, rows, keys, positions, N, C, skip_key);
    CUDA_CHECK_LAUNCH();
  }
  short_segment_sum_kernel<T, G><<<scatter_grid(st, N, C), kThreads, 0, st.stream()>>>(
      grad, rows, keys, positions, N, C, skip_key);
  CUDA_CHECK_LAUNCH();
  if (N > kChunk) {
    long_segment_sum_kernel<T, G><<<scatter_grid(st, (N + kChunk - 1) / kChunk, C), kThreads, 0,
                                    st.stream()>>>(grad, rows, partials, keys, positions, N, C,
                                                   skip_key);
    CUDA_CHECK_LAUNCH();
  }
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
  // Scratch: keys, positions, sorted keys, sorted positions (N uint32 each), the sort's storage,
  // the chunk partials ([ceil(N/L), C] fp32: the most full chunks there can be, one per L-tile).
  const size_t vec = aligned256(static_cast<size_t>(N) * sizeof(uint32_t));
  const size_t sort_span = aligned256(sort_bytes);
  const size_t partial_bytes =
      N > kChunk ? static_cast<size_t>((N + kChunk - 1) / kChunk) * C * sizeof(float) : 0;
  char* base = static_cast<char*>(st.scratch(4 * vec + sort_span + partial_bytes));
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* positions = reinterpret_cast<uint32_t*>(base + vec);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + 2 * vec);
  auto* sorted_positions = reinterpret_cast<uint32_t*>(base + 3 * vec);
  void* sort_storage = base + 4 * vec;
  auto* partials = reinterpret_cast<float*>(base + 4 * vec + sort_span);

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
      launch_sums<T, T>(st, static_cast<T*>(grad.raw()), src, partials, sorted_keys,
                        sorted_positions, N, C, skip_key);
    else
      launch_sums<T, float>(st, static_cast<float*>(grad.raw()), src, partials, sorted_keys,
                            sorted_positions, N, C, skip_key);
  });
}

}  // namespace shardlm::ops::cuda
