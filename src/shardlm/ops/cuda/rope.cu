// rope.cu — rotary position embedding (RoPE) on the q and k heads of the fused QKV activation:
// the fp32 cos/sin table, and the rotation forward (+θ) and backward (-θ, the transpose).
//
//   table[t, i] = (cos θ, sin θ),  θ = t * base^(-2i/R)      (computed in double, stored fp32)
//   pair (a, b) -> (a cos θ - b sin θ,  b cos θ + a sin θ)    rotate-half: (x[i], x[i + R/2])
//                                                              interleaved: (x[2i], x[2i + 1])
// Algorithm: one thread per rotated pair (row n, q/k head, pair i) in a grid-stride loop; it
// reads its two elements and the table entry, rotates in fp32 and writes both (pairs are
// disjoint, so in place is race-free). Out of place, the row is first copied stream-ordered
// (v heads and dims >= R pass through), then rotated from `in`. Memory-bound; a separate kernel
// after the QKV GEMM, not fused into attention yet (the model runs it in place on the saved
// QKV activation, so attention reads rotated q/k).
#include <cmath>
#include <string>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
__global__ void rope_cos_sin_kernel(float2* table, int64_t positions, int64_t half, double base) {
  const int64_t items = positions * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += stride) {
    const int64_t t = it / half, i = it % half;
    const double inv_freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half));
    double s, c;
    sincos(static_cast<double>(t) * inv_freq, &s, &c);
    table[it] = make_float2(static_cast<float>(c), static_cast<float>(s));
  }
}

// Geometry of one fused QKV row, Megatron grouped layout.
struct RopeGeometry {
  int64_t rows;          // B*T
  int64_t seq;           // T (row n has position n % T)
  int64_t head_dim;      // HS
  int64_t heads_rot;     // G * (NH/G + 1): q and k heads per row
  int64_t slots;         // NH/G + 1 rotated heads per group (then one v head)
  int64_t group_width;   // (NH/G + 2) * HS
  int64_t row_width;     // G * group_width
  int64_t half;          // R/2 pairs per head
};

template <typename T>
__global__ void rope_rotate_kernel(T* out, const T* in, const float2* table, RopeGeometry geo,
                                   bool interleaved, float sign) {
  const int64_t items = geo.rows * geo.heads_rot * geo.half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += stride) {
    const int64_t i = it % geo.half;
    const int64_t head = (it / geo.half) % geo.heads_rot;
    const int64_t n = it / (geo.half * geo.heads_rot);
    const int64_t g = head / geo.slots, slot = head % geo.slots;
    const int64_t base = n * geo.row_width + g * geo.group_width + slot * geo.head_dim;
    const int64_t ia = base + (interleaved ? 2 * i : i);
    const int64_t ib = base + (interleaved ? 2 * i + 1 : i + geo.half);
    const float2 cs = table[(n % geo.seq) * geo.half + i];
    const float s = sign * cs.y;
    const float a = load_as_float(in[ia]), b = load_as_float(in[ib]);
    out[ia] = float_to<T>(a * cs.x - b * s);
    out[ib] = float_to<T>(b * cs.x + a * s);
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
  RopeGeometry geo;
  geo.rows = in.size(0) * in.size(1);
  geo.seq = in.size(1);
  geo.head_dim = HS;
  geo.slots = per_group + 1;
  geo.heads_rot = G * geo.slots;
  geo.group_width = (per_group + 2) * HS;
  geo.row_width = G * geo.group_width;
  geo.half = cos_sin.size(1);
  if (geo.rows == 0) return;
  if (out.raw() != in.raw())
    CUDA_CHECK(cudaMemcpyAsync(out.raw(), in.raw(), in.nbytes(), cudaMemcpyDeviceToDevice,
                               st.stream()));
  const int64_t items = geo.rows * geo.heads_rot * geo.half;
  const unsigned int blocks = grid_stride_blocks(st, items, 256);
  const auto* table = static_cast<const float2*>(cos_sin.raw());
  dispatch_float(in.dtype(), op, [&]<typename T>() {
    rope_rotate_kernel<T><<<blocks, 256, 0, st.stream()>>>(
        static_cast<T*>(out.raw()), static_cast<const T*>(in.raw()), table, geo, interleaved,
        sign);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void rope_cos_sin(DeviceContext& ctx, Tensor cos_sin, double base) {
  check_table(ctx, cos_sin, "rope_cos_sin");
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t positions = cos_sin.size(0), half = cos_sin.size(1);
  if (positions * half == 0) return;
  const unsigned int blocks = grid_stride_blocks(st, positions * half, 256);
  rope_cos_sin_kernel<<<blocks, 256, 0, st.stream()>>>(static_cast<float2*>(cos_sin.raw()),
                                                        positions, half, base);
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
