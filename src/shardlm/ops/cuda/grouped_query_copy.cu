#include "shardlm/ops/cuda/grouped_query_copy.h"

#include "shardlm/ops/cuda/common.cuh"

namespace shardlm::ops::cuda {
namespace {

// Unit = U bytes (16, or the element size when 16-byte moves do not fit). Unit u of the
// buffer: row u / per_row, group and unit within it from the rest.
template <typename U>
__global__ void grouped_query_copy_kernel(const char* src, char* dst, int64_t total_units,
                                          int64_t per_group, int64_t G, int64_t qkv_group_units,
                                          bool to_qkv) {
  const int64_t per_row = per_group * G;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < total_units;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = u / per_row, k = u - row * per_row;
    const int64_t g = k / per_group, j = k - g * per_group;
    const int64_t qkv_unit = (row * G + g) * qkv_group_units + j;  // row width = G groups
    const int64_t buf_unit = u;
    if (to_qkv)
      reinterpret_cast<U*>(dst)[qkv_unit] = reinterpret_cast<const U*>(src)[buf_unit];
    else
      reinterpret_cast<U*>(dst)[buf_unit] = reinterpret_cast<const U*>(src)[qkv_unit];
  }
}

template <typename U>
void launch(const GroupedQueryLayout& L, const void* src, void* dst, bool to_qkv,
            cudaStream_t stream) {
  const int64_t unit = sizeof(U);
  const int64_t per_group = L.R * L.HS * static_cast<int64_t>(L.elt) / unit;
  const int64_t qkv_group_units = (L.R + 2) * L.HS * static_cast<int64_t>(L.elt) / unit;
  const int64_t total = L.rows * L.G * per_group;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t{1} << 16);
  grouped_query_copy_kernel<U><<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
      static_cast<const char*>(src), static_cast<char*>(dst), total, per_group, L.G,
      qkv_group_units, to_qkv);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void copy_grouped_queries(const GroupedQueryLayout& L, const void* src, void* dst, bool to_qkv,
                          CUstream_st* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool vec = (L.HS * static_cast<int64_t>(L.elt)) % 16 == 0 && aligned16(src) &&
                   aligned16(dst);
  if (vec) return launch<uint4>(L, src, dst, to_qkv, s);
  switch (L.elt) {
    case 2: return launch<uint16_t>(L, src, dst, to_qkv, s);
    case 4: return launch<uint32_t>(L, src, dst, to_qkv, s);
    default: return launch<uint8_t>(L, src, dst, to_qkv, s);
  }
}

}  // namespace shardlm::ops::cuda
