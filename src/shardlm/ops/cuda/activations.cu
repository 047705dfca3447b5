// activations.cu — GELU (tanh approximation), SwiGLU and tanh, forward and backward.
//
// Algorithms: GELU is a pure map (elementwise_map.cuh). SwiGLU reads the two halves of each row
// of in[N,2F] and writes out[N,F] (backward: din[N,2F] from dout[N,F] and in); one grid-stride
// loop over the N*F (row, column) pairs, 16-byte vectors when F and the pointers allow.
// All memory-bound; arithmetic in fp32.
#include <cmath>
#include <type_traits>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/elementwise_map.cuh"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

struct GeluForwardOp {
  __device__ float operator()(float x, float) const {
    const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
};
// (dout, x) -> dout * gelu'(x)
struct GeluBackwardOp {
  __device__ float operator()(float dout, float x) const {
    const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    const float th = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
    return dout * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
  }
};

struct TanhForwardOp {
  __device__ float operator()(float x, float) const { return tanhf(x); }
};
// (dout, y = tanh(x)) -> dout * (1 - y^2)
struct TanhBackwardOp {
  __device__ float operator()(float dout, float y) const { return dout * (1.0f - y * y); }
};

__device__ __forceinline__ float sigmoid(float a) { return 1.0f / (1.0f + __expf(-a)); }

// One "item" is kW consecutive columns f of one row n (kW = 1 for the scalar path).
// in[N,2F] = [a | b]; out[N,F] = silu(a) * b.
template <typename T, int kW>
__global__ void swiglu_forward_kernel(T* out, const T* in, int64_t rows, int64_t F) {
  using Chunk = std::conditional_t<kW == 1, T, Vec16<T>>;
  const int64_t items_per_row = F / kW, items = rows * items_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += stride) {
    const int64_t n = it / items_per_row, f = (it % items_per_row) * kW;
    const Chunk ca = *reinterpret_cast<const Chunk*>(in + n * 2 * F + f);
    const Chunk cb = *reinterpret_cast<const Chunk*>(in + n * 2 * F + F + f);
    Chunk co;
    const T* pa = reinterpret_cast<const T*>(&ca);
    const T* pb = reinterpret_cast<const T*>(&cb);
    T* po = reinterpret_cast<T*>(&co);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float a = load_as_float(pa[k]), b = load_as_float(pb[k]);
      po[k] = float_to<T>(a * sigmoid(a) * b);
    }
    *reinterpret_cast<Chunk*>(out + n * F + f) = co;
  }
}

// din[n, f] = dout * b * silu'(a);  din[n, F + f] = dout * silu(a).
template <typename T, int kW>
__global__ void swiglu_backward_kernel(T* din, const T* dout, const T* in, int64_t rows,
                                       int64_t F) {
  using Chunk = std::conditional_t<kW == 1, T, Vec16<T>>;
  const int64_t items_per_row = F / kW, items = rows * items_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += stride) {
    const int64_t n = it / items_per_row, f = (it % items_per_row) * kW;
    const Chunk ca = *reinterpret_cast<const Chunk*>(in + n * 2 * F + f);
    const Chunk cb = *reinterpret_cast<const Chunk*>(in + n * 2 * F + F + f);
    const Chunk cd = *reinterpret_cast<const Chunk*>(dout + n * F + f);
    Chunk da, db;
    const T* pa = reinterpret_cast<const T*>(&ca);
    const T* pb = reinterpret_cast<const T*>(&cb);
    const T* pd = reinterpret_cast<const T*>(&cd);
    T* pda = reinterpret_cast<T*>(&da);
    T* pdb = reinterpret_cast<T*>(&db);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float a = load_as_float(pa[k]), b = load_as_float(pb[k]), d = load_as_float(pd[k]);
      const float s = sigmoid(a);
      const float silu = a * s;
      pda[k] = float_to<T>(d * b * s * (1.0f + a * (1.0f - s)));
      pdb[k] = float_to<T>(d * silu);
    }
    *reinterpret_cast<Chunk*>(din + n * 2 * F + f) = da;
    *reinterpret_cast<Chunk*>(din + n * 2 * F + F + f) = db;
  }
}

// ---- launchers --------------------------------------------------------------------------------
template <typename T>
void launch_swiglu(const CudaBackendState& st, T* din_or_out, const T* dout, const T* in,
                   int64_t rows, int64_t F, bool backward) {
  if (rows * F == 0) return;
  constexpr int kW = Vec16<T>::kSize;
  const bool vector = F % kW == 0 && aligned16(din_or_out) && aligned16(in) &&
                      (dout == nullptr || aligned16(dout));
  const int64_t items = rows * (vector ? F / kW : F);
  const unsigned int blocks = grid_stride_blocks(st, items, 256);
  if (backward) {
    if (vector)
      swiglu_backward_kernel<T, kW><<<blocks, 256, 0, st.stream()>>>(din_or_out, dout, in, rows, F);
    else
      swiglu_backward_kernel<T, 1><<<blocks, 256, 0, st.stream()>>>(din_or_out, dout, in, rows, F);
  } else {
    if (vector)
      swiglu_forward_kernel<T, kW><<<blocks, 256, 0, st.stream()>>>(din_or_out, in, rows, F);
    else
      swiglu_forward_kernel<T, 1><<<blocks, 256, 0, st.stream()>>>(din_or_out, in, rows, F);
  }
  CUDA_CHECK_LAUNCH();
}

// The last axis of in is 2F; out/dout hold F per row.
void check_swiglu(const DeviceContext& ctx, const Tensor& half, const Tensor& full,
                  const char* op, const char* half_name, const char* full_name) {
  require_on_device(ctx, half, op, half_name);
  require_on_device(ctx, full, op, full_name);
  require_same_dtype(half, full, op, half_name, full_name);
  const int64_t two_f = full.size(full.rank() - 1);
  if (two_f % 2 != 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: last axis of '" + full_name + "' " +
                    full.shape().to_string() + " must be even (2F)");
  require_numel(half, full.numel() / 2, op, half_name);
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void gelu_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  require_on_device(ctx, out, "gelu_forward", "out");
  require_on_device(ctx, in, "gelu_forward", "in");
  require_same_dtype(out, in, "gelu_forward", "out", "in");
  require_numel(in, out.numel(), "gelu_forward", "in");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), "gelu_forward", [&]<typename T>() {
    launch_map<T>(st, out.numel(), static_cast<T*>(out.raw()), static_cast<const T*>(in.raw()),
                  nullptr, GeluForwardOp{});
  });
}

void gelu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) {
  require_on_device(ctx, din, "gelu_backward", "din");
  require_on_device(ctx, dout, "gelu_backward", "dout");
  require_on_device(ctx, in, "gelu_backward", "in");
  require_same_dtype(din, dout, "gelu_backward", "din", "dout");
  require_same_dtype(din, in, "gelu_backward", "din", "in");
  require_numel(dout, din.numel(), "gelu_backward", "dout");
  require_numel(in, din.numel(), "gelu_backward", "in");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(din.dtype(), "gelu_backward", [&]<typename T>() {
    launch_map<T>(st, din.numel(), static_cast<T*>(din.raw()), static_cast<const T*>(dout.raw()),
                  static_cast<const T*>(in.raw()), GeluBackwardOp{});
  });
}

void swiglu_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  check_swiglu(ctx, out, in, "swiglu_forward", "out", "in");
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t F = in.size(in.rank() - 1) / 2, rows = F == 0 ? 0 : in.numel() / (2 * F);
  dispatch_float(out.dtype(), "swiglu_forward", [&]<typename T>() {
    launch_swiglu<T>(st, static_cast<T*>(out.raw()), nullptr, static_cast<const T*>(in.raw()),
                     rows, F, /*backward=*/false);
  });
}

void swiglu_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& in) {
  check_swiglu(ctx, dout, in, "swiglu_backward", "dout", "in");
  require_on_device(ctx, din, "swiglu_backward", "din");
  require_same_dtype(din, in, "swiglu_backward", "din", "in");
  require_numel(din, in.numel(), "swiglu_backward", "din");
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t F = in.size(in.rank() - 1) / 2, rows = F == 0 ? 0 : in.numel() / (2 * F);
  dispatch_float(din.dtype(), "swiglu_backward", [&]<typename T>() {
    launch_swiglu<T>(st, static_cast<T*>(din.raw()), static_cast<const T*>(dout.raw()),
                     static_cast<const T*>(in.raw()), rows, F, /*backward=*/true);
  });
}

void tanh_forward(DeviceContext& ctx, Tensor out, const Tensor& in) {
  require_on_device(ctx, out, "tanh_forward", "out");
  require_on_device(ctx, in, "tanh_forward", "in");
  require_same_dtype(out, in, "tanh_forward", "out", "in");
  require_numel(in, out.numel(), "tanh_forward", "in");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), "tanh_forward", [&]<typename T>() {
    launch_map<T>(st, out.numel(), static_cast<T*>(out.raw()), static_cast<const T*>(in.raw()),
                  nullptr, TanhForwardOp{});
  });
}

void tanh_backward(DeviceContext& ctx, Tensor din, const Tensor& dout, const Tensor& out) {
  require_on_device(ctx, din, "tanh_backward", "din");
  require_on_device(ctx, dout, "tanh_backward", "dout");
  require_on_device(ctx, out, "tanh_backward", "out");
  require_same_dtype(din, dout, "tanh_backward", "din", "dout");
  require_same_dtype(din, out, "tanh_backward", "din", "out");
  require_numel(dout, din.numel(), "tanh_backward", "dout");
  require_numel(out, din.numel(), "tanh_backward", "out");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(din.dtype(), "tanh_backward", [&]<typename T>() {
    launch_map<T>(st, din.numel(), static_cast<T*>(din.raw()), static_cast<const T*>(dout.raw()),
                  static_cast<const T*>(out.raw()), TanhBackwardOp{});
  });
}

}  // namespace shardlm::ops::cuda
