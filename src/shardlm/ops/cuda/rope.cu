// rope.cu — rotary position embedding (RoPE) on the q and k heads of the fused QKV activation:
// the fp32 cos/sin table, and the rotation forward (+θ) and backward (-θ, the transpose).
//
//   table[t, i] = (cos θ, sin θ),  θ = t * base^(-2i/R)      (computed in double, stored fp32)
//   pair (a, b) -> (a cos θ - b sin θ,  b cos θ + a sin θ)    rotate-half: (x[i], x[i + R/2])
//                                                              interleaved: (x[2i], x[2i + 1])
// Algorithm: a 2D launch, threadIdx.y (and the block) over rows, threadIdx.x over the row's work
// items. An item is kW consecutive pairs of one rotated head (kW = 16 bytes of T when the head
// sizes and pointers allow, else 1): it reads two kW-element chunks (rotate-half: x[i..] and
// x[i + R/2..]; interleaved: the 2kW elements x[2i..]), kW table entries of the row's position,
// rotates in fp32 and writes both chunks (pairs are disjoint, so in place is race-free). Out of
// place, extra items copy the v heads and the dims >= R chunk by chunk, so every element is read
// and written once. Only 32-bit index math per item (rows < 2^31). Memory-bound: in place the
// floor is 2 * rows * G*(NH/G+1) * R * sizeof(T) bytes over bandwidth. A separate kernel after
// the QKV GEMM, not fused into attention yet (the model runs it in place on the saved QKV
// activation, so attention reads rotated q/k).
#include <climits>
#include <cmath>
#include <string>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
__global__ void rope_cos_sin_kernel(float2* table, int64_t positions, int64_t half,
                                    RopeFrequencies freq) {
  const int64_t items = positions * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += stride) {
    const int64_t t = it / half, i = it % half;
    const double inv_freq = rope_inv_freq(freq, i, 2 * half);
    double s, c;
    sincos(static_cast<double>(t) * inv_freq, &s, &c);
    table[it] = make_float2(static_cast<float>(c), static_cast<float>(s));
  }
}

// Geometry of one fused QKV row (Megatron grouped layout) and its work items; all within-row
// sizes fit int (the launcher checks).
struct RopeGeometry {
  int rows;         // B*T
  int seq;          // T (row n has position n % T)
  int head_dim;     // HS
  int half;         // R/2 pairs per rotated head
  int slots;        // NH/G + 1 rotated heads per group (then one v head)
  int group_width;  // (NH/G + 2) * HS
  int row_width;    // G * group_width
  int rot_items;    // half / kW rotation items per rotated head
  int head_items;   // rot_items, plus (HS - R) / kW copy items out of place
  int group_items;  // slots * head_items, plus HS / kW v-head copy items out of place
  int row_items;    // G * group_items
};

// One rotation, rounded once to T by the caller. The roundings are spelled out (one fused
// product per output, the b-product rounded) so every path, and the test's host model of the
// kernel, gives the same bits whatever the compiler would contract.
__device__ __forceinline__ void rotate_pair(float& a, float& b, float2 cs, float sign) {
  const float s = sign * cs.y;  // sign is +-1: exact
  const float ra = __fmaf_rn(a, cs.x, -__fmul_rn(b, s));
  const float rb = __fmaf_rn(a, s, __fmul_rn(b, cs.x));
  a = ra;
  b = rb;
}

// kW table entries from p (16-byte aligned when kW > 1), through the read-only cache: every
// rotated head of the row reads the same entries.
template <int kW>
__device__ __forceinline__ void load_table(const float2* p, float2 (&cs)[kW]) {
  if constexpr (kW == 1) {
    cs[0] = __ldg(p);
  } else {
    static_assert(kW % 2 == 0, "vector chunks hold an even number of pairs");
#pragma unroll
    for (int k = 0; k < kW / 2; ++k) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p) + k);
      cs[2 * k] = make_float2(v.x, v.y);
      cs[2 * k + 1] = make_float2(v.z, v.w);
    }
  }
}

// kW elements from x to y unchanged (bit copy: one 16-byte move when kW > 1).
template <int kW, typename T>
__device__ __forceinline__ void copy_chunk(T* y, const T* x) {
  if constexpr (kW == 1)
    *y = *x;
  else
    *reinterpret_cast<Vec16<T>*>(y) = *reinterpret_cast<const Vec16<T>*>(x);
}

// Items of a group, in order: for each rotated slot its rot_items rotations then its copies of
// dims >= R, then the v head's copies (copies exist only out of place).
template <typename T, int kW, bool kInterleaved>
__global__ void rope_rotate_kernel(T* out, const T* in, const float2* table, RopeGeometry geo,
                                   float sign) {
  const unsigned int n = blockIdx.x * blockDim.y + threadIdx.y;
  if (n >= static_cast<unsigned int>(geo.rows)) return;
  const int64_t row_offset = static_cast<int64_t>(n) * geo.row_width;
  const T* x = in + row_offset;
  T* y = out + row_offset;
  const float2* cs_row = table + static_cast<int64_t>(n % static_cast<unsigned int>(geo.seq)) *
                                     geo.half;
  for (int u = threadIdx.x; u < geo.row_items; u += blockDim.x) {
    const int g = u / geo.group_items, r = u - g * geo.group_items;
    const int group_col = g * geo.group_width;
    if (r >= geo.slots * geo.head_items) {  // v head (out of place only)
      const int col = group_col + geo.slots * geo.head_dim + (r - geo.slots * geo.head_items) * kW;
      copy_chunk<kW>(y + col, x + col);
      continue;
    }
    const int slot = r / geo.head_items, k = r - slot * geo.head_items;
    const int head_col = group_col + slot * geo.head_dim;
    if (k >= geo.rot_items) {  // dims >= R of a rotated head (out of place only)
      const int col = head_col + 2 * geo.half + (k - geo.rot_items) * kW;
      copy_chunk<kW>(y + col, x + col);
      continue;
    }
    const int i0 = k * kW;  // first pair of this item
    const int ca = head_col + (kInterleaved ? 2 * i0 : i0);
    const int cb = ca + (kInterleaved ? kW : geo.half);
    float va[kW], vb[kW];
    load_chunk<kW>(x + ca, va);
    load_chunk<kW>(x + cb, vb);
    float2 cs[kW];
    load_table<kW>(cs_row + i0, cs);
    if constexpr (kInterleaved) {
      // Pair j is elements (2j, 2j + 1) of va ++ vb; kW == 1 gives (va[0], vb[0]).
      float e[2 * kW];
#pragma unroll
      for (int m = 0; m < kW; ++m) e[m] = va[m], e[kW + m] = vb[m];
#pragma unroll
      for (int j = 0; j < kW; ++j) rotate_pair(e[2 * j], e[2 * j + 1], cs[j], sign);
#pragma unroll
      for (int m = 0; m < kW; ++m) va[m] = e[m], vb[m] = e[kW + m];
    } else {
#pragma unroll
      for (int j = 0; j < kW; ++j) rotate_pair(va[j], vb[j], cs[j], sign);
    }
    store_chunk<kW>(y + ca, va);
    store_chunk<kW>(y + cb, vb);
  }
}

// ---- launchers ------------------------------------------------------------------------------------
void check_table(const DeviceContext& ctx, const Tensor& cos_sin, const char* op) {
  require_on_device(ctx, cos_sin, op, "cos_sin");
  require_dtype(cos_sin, DType::kF32, op, "cos_sin");
  if (cos_sin.rank() != 3 || cos_sin.size(2) != 2)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: cos_sin must be "
                                             "[P, R/2, 2], got " + cos_sin.shape().to_string());
  if ((reinterpret_cast<uintptr_t>(cos_sin.raw()) & 7u) != 0)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: cos_sin must be "
                                             "8-byte aligned (read as float2 pairs)");
}

template <typename T, int kW, bool kInterleaved>
void launch_rotate(const CudaBackendState& st, T* out, const T* in, const float2* table,
                   RopeGeometry geo, bool copy, float sign) {
  geo.rot_items = geo.half / kW;
  geo.head_items = geo.rot_items + (copy ? (geo.head_dim - 2 * geo.half) / kW : 0);
  geo.group_items = geo.slots * geo.head_items + (copy ? geo.head_dim / kW : 0);
  geo.row_items = geo.row_width / geo.group_width * geo.group_items;
  if (geo.row_items == 0) return;
  // About 256 threads a block: x covers a row's items (warp-rounded, looping past 256), y rows.
  const int bx = std::min((geo.row_items + 31) / 32 * 32, 256);
  const int by = std::max(1, 256 / bx);
  const dim3 block(bx, by);
  const dim3 grid(static_cast<unsigned int>((geo.rows + by - 1) / by));
  rope_rotate_kernel<T, kW, kInterleaved><<<grid, block, 0, st.stream()>>>(out, in, table, geo,
                                                                            sign);
  CUDA_CHECK_LAUNCH();
}

void rope_rotate(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                 const AttentionShape& shape, bool interleaved, float sign, const char* op,
                 const char* out_name, const char* in_name) {
  require_on_device(ctx, out, op, out_name);
  require_on_device(ctx, in, op, in_name);
  require_same_dtype(out, in, op, out_name, in_name);
  require_numel(out, in.numel(), op, out_name);
  check_table(ctx, cos_sin, op);
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t G = shape.num_query_groups, HS = shape.head_dim;
  const int64_t per_group = shape.num_heads / G;
  const int64_t rows = in.size(0) * in.size(1);
  const int64_t row_width = G * (per_group + 2) * HS;
  if (rows == 0) return;
  if (rows > INT_MAX || row_width > INT_MAX / 2)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: " + std::to_string(rows) + " rows of " +
                    std::to_string(row_width) + " elements exceed the kernel's 32-bit indexing");
  RopeGeometry geo{};
  geo.rows = static_cast<int>(rows);
  geo.seq = static_cast<int>(in.size(1));
  geo.head_dim = static_cast<int>(HS);
  geo.half = static_cast<int>(cos_sin.size(1));
  geo.slots = static_cast<int>(per_group + 1);
  geo.group_width = static_cast<int>((per_group + 2) * HS);
  geo.row_width = static_cast<int>(row_width);
  const bool copy = out.raw() != in.raw();
  const auto* table = static_cast<const float2*>(cos_sin.raw());
  dispatch_float(in.dtype(), op, [&]<typename T>() {
    constexpr int kV = Vec16<T>::kSize;
    // Every chunk start is a multiple of kV elements from the row start when R/2 and HS are.
    const bool vector = geo.half % kV == 0 && geo.head_dim % kV == 0 && aligned16(in.raw()) &&
                        aligned16(out.raw()) && aligned16(table);
    auto* o = static_cast<T*>(out.raw());
    const auto* i = static_cast<const T*>(in.raw());
    if (vector && interleaved) launch_rotate<T, kV, true>(st, o, i, table, geo, copy, sign);
    else if (vector) launch_rotate<T, kV, false>(st, o, i, table, geo, copy, sign);
    else if (interleaved) launch_rotate<T, 1, true>(st, o, i, table, geo, copy, sign);
    else launch_rotate<T, 1, false>(st, o, i, table, geo, copy, sign);
  });
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, const RopeFrequencies& freq) {
  check_table(ctx, cos_sin, "rope_cos_sin");
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t positions = cos_sin.size(0), half = cos_sin.size(1);
  if (positions * half == 0) return;
  const unsigned int blocks = grid_stride_blocks(st, positions * half, 256);
  rope_cos_sin_kernel<<<blocks, 256, 0, st.stream()>>>(static_cast<float2*>(cos_sin.raw()),
                                                        positions, half, freq);
  CUDA_CHECK_LAUNCH();
}

void rope_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& cos_sin,
                  const AttentionShape& shape, bool interleaved) {
  rope_rotate(ctx, out, in, cos_sin, shape, interleaved, 1.0f, "rope_forward", "out", "in");
}

void rope_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& cos_sin,
                   const AttentionShape& shape, bool interleaved) {
  rope_rotate(ctx, din, dout, cos_sin, shape, interleaved, -1.0f, "rope_backward", "din",
              "dout");
}

}  // namespace shardlm::ops::cuda
