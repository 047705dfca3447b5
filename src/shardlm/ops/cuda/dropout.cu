// dropout.cu — dropout forward and backward with the CPU's Philox stream (philox.cuh), so the
// GPU mask is bit-identical to the CPU mask for the same key and positions.
//
// Algorithm: element i has global position q = position_offset + i and is dropped when
// dropout_uniform(key, q) <= p. One Philox block gives the words of positions 4g .. 4g+3, so
// each thread owns one group g (one Philox call per 4 elements) and scales its (up to) 4
// elements by 0 or 1/(1-p). Forward and backward are the same map (din = dout * mask/(1-p)):
// the mask is recomputed, never stored.
#include <cmath>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/philox.cuh"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
__global__ void dropout_kernel(T* out, const T* in, int64_t n, uint64_t position_offset,
                               DropoutStream stream, float keep_scale) {
  const uint64_t first_group = position_offset / 4;
  const uint64_t groups = (position_offset + n - 1) / 4 - first_group + 1;
  const uint64_t grid_stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < groups;
       t += grid_stride) {
    const uint64_t g = first_group + t;
    const uint4 bits = stream.bits_for_group(g);
#pragma unroll
    for (unsigned int w = 0; w < 4; ++w) {
      const int64_t i = static_cast<int64_t>(4 * g + w - position_offset);
      if (i < 0 || i >= n) continue;
      const float scale = stream.dropped(uint4_word(bits, w)) ? 0.0f : keep_scale;
      out[i] = float_to<T>(load_as_float(in[i]) * scale);
    }
  }
}

// ---- launcher -----------------------------------------------------------------------------------
void launch_dropout(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                    const DropoutKey& key, uint64_t position_offset, const char* op) {
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, in, op, "in");
  require_same_dtype(out, in, op, "out", "in");
  require_numel(in, out.numel(), op, "in");
  if (!(p >= 0.0 && p <= 1.0))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: p = " + std::to_string(p) + " is not in [0, 1]");
  if (out.numel() == 0) return;
  if (p == 0.0) {
    if (out.raw() != in.raw()) copy(ctx, out, in);
    return;
  }
  const CudaBackendState& st = cuda_state(ctx);
  const DropoutStream stream = make_dropout_stream(key, p);
  const float keep_scale = p >= 1.0 ? 0.0f : static_cast<float>(1.0 / (1.0 - p));
  const int64_t n = out.numel();
  const int64_t groups =
      static_cast<int64_t>((position_offset + n - 1) / 4 - position_offset / 4 + 1);
  dispatch_float(out.dtype(), op, [&]<typename T>() {
    const unsigned int blocks = grid_stride_blocks(st, groups, 256);
    dropout_kernel<T><<<blocks, 256, 0, st.stream()>>>(static_cast<T*>(out.raw()),
                                                       static_cast<const T*>(in.raw()), n,
                                                       position_offset, stream, keep_scale);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void dropout_forward(DeviceContext& ctx, Tensor out, const Tensor& in, double p,
                     const DropoutKey& key, uint64_t position_offset) {
  launch_dropout(ctx, out, in, p, key, position_offset, "dropout_forward");
}

void dropout_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, double p,
                      const DropoutKey& key, uint64_t position_offset) {
  launch_dropout(ctx, din, dout, p, key, position_offset, "dropout_backward");
}

}  // namespace shardlm::ops::cuda
