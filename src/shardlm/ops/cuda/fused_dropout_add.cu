// fused_dropout_add.cu — residual add fused with dropout: out = residual + dropout(x), one pass
// over three tensors instead of dropout (2 passes of memory) followed by add (3).
//
// Algorithm: as dropout.cu, element i has global position q = position_offset + i and one
// Philox block gives the words of positions 4g .. 4g+3, so each thread owns one group g (one
// Philox call per 4 elements). The branch value is rounded to T before the add, with the
// multiply and the add kept apart (__fmul_rn / __fadd_rn are never contracted into an FMA), so
// the result equals dropout_forward followed by add bit for bit, on every dtype. When the
// groups line up with the data (position_offset % 4 == 0, pointers aligned to 4 elements) each
// full group is one 4-element vector load/store per tensor; a partial last group, or any
// misalignment, takes the scalar path. p == 0 is a plain add through elementwise_map.cuh with
// no Philox work. Backward is dropout's backward (same mask, same scale); the residual's
// gradient is dout itself, so nothing is launched for it.
//
// Memory-bound: the floor is 3 * n * sizeof(T) bytes over bandwidth (p == 0 or not).
#include <cmath>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/elementwise_map.cuh"
#include "shardlm/ops/cuda/philox.cuh"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
// Four consecutive elements: the elements of one Philox group when the groups are aligned.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// residual + round_T(x * scale), scale = 0 (dropped) or 1/(1-p): dropout_kernel's value, then
// the add kernel's, with no fused multiply-add between them.
template <typename T>
__device__ __forceinline__ T dropout_add_element(T x, T residual, float scale) {
  const T branch = float_to<T>(__fmul_rn(load_as_float(x), scale));
  return float_to<T>(__fadd_rn(load_as_float(residual), load_as_float(branch)));
}

template <typename T, bool kQuads>
__global__ void dropout_add_kernel(T* out, const T* x, const T* residual, int64_t n,
                                   uint64_t position_offset, DropoutStream stream,
                                   float keep_scale) {
  const uint64_t first_group = position_offset / 4;
  const uint64_t groups = (position_offset + n - 1) / 4 - first_group + 1;
  const uint64_t grid_stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < groups;
       t += grid_stride) {
    const uint64_t g = first_group + t;
    const uint4 bits = stream.bits_for_group(g);
    const int64_t base = static_cast<int64_t>(4 * g) - static_cast<int64_t>(position_offset);
    if constexpr (kQuads) {
      if (base + 4 <= n) {  // base >= 0 here: position_offset % 4 == 0
        const Quad<T> qx = *reinterpret_cast<const Quad<T>*>(x + base);
        const Quad<T> qr = *reinterpret_cast<const Quad<T>*>(residual + base);
        Quad<T> qo;
#pragma unroll
        for (unsigned int w = 0; w < 4; ++w) {
          const float scale = stream.dropped(uint4_word(bits, w)) ? 0.0f : keep_scale;
          qo.v[w] = dropout_add_element(qx.v[w], qr.v[w], scale);
        }
        *reinterpret_cast<Quad<T>*>(out + base) = qo;
        continue;
      }
    }
#pragma unroll
    for (unsigned int w = 0; w < 4; ++w) {
      const int64_t i = base + static_cast<int64_t>(w);
      if (i < 0 || i >= n) continue;
      const float scale = stream.dropped(uint4_word(bits, w)) ? 0.0f : keep_scale;
      out[i] = dropout_add_element(x[i], residual[i], scale);
    }
  }
}

// (residual, x) -> residual + x, the p == 0 path.
struct ResidualAddOp {
  __device__ float operator()(float residual, float x) const { return residual + x; }
};

// ---- launcher -----------------------------------------------------------------------------------
template <typename T>
void launch_dropout_add(const CudaBackendState& st, T* out, const T* x, const T* residual,
                        int64_t n, double p, const DropoutKey& key, uint64_t position_offset) {
  if (n == 0) return;
  if (p == 0.0) {
    launch_map<T>(st, n, out, residual, x, ResidualAddOp{});
    return;
  }
  const DropoutStream stream = make_dropout_stream(key, p);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
  const int64_t groups =
      static_cast<int64_t>((position_offset + n - 1) / 4 - position_offset / 4 + 1);
  const unsigned int blocks = grid_stride_blocks(st, groups, 256);
  const auto quad_aligned = [](const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % (4 * sizeof(T)) == 0;
  };
  const bool quads = position_offset % 4 == 0 && quad_aligned(out) && quad_aligned(x) &&
                     quad_aligned(residual);
  if (quads)
    dropout_add_kernel<T, true><<<blocks, 256, 0, st.stream()>>>(out, x, residual, n,
                                                                 position_offset, stream,
                                                                 keep_scale);
  else
    dropout_add_kernel<T, false><<<blocks, 256, 0, st.stream()>>>(out, x, residual, n,
                                                                  position_offset, stream,
                                                                  keep_scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void dropout_add_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Tensor& residual,
                         double p, const DropoutKey& key, uint64_t position_offset) {
  const char* op = "dropout_add_forward";
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, x, op, "x");
  require_on_device(ctx, residual, op, "residual");
  require_same_dtype(out, x, op, "out", "x");
  require_same_dtype(out, residual, op, "out", "residual");
  require_numel(x, out.numel(), op, "x");
  require_numel(residual, out.numel(), op, "residual");
  if (!(p >= 0.0 && p < 1.0))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: p = " + std::to_string(p) + " is not in [0, 1)");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    launch_dropout_add<T>(st, static_cast<T*>(out.raw()), static_cast<const T*>(x.raw()),
                          static_cast<const T*>(residual.raw()), out.numel(), p, key,
                          position_offset);
  });
}

void dropout_add_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, double p,
                          const DropoutKey& key, uint64_t position_offset) {
  dropout_backward(ctx, dx, dout, p, key, position_offset);
}

}  // namespace shardlm::ops::cuda
