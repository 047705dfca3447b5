// elementwise.cu — fill, copy (with dtype conversion), add, add_inplace, scale_inplace, and the
// two reductions that return a host value: sum_squares (double, deterministic) and all_finite.
//
// Algorithms: the maps go through launch_map (elementwise_map.cuh: 16-byte vector grid-stride
// loops). sum_squares is a two-pass tree reduction in double with a fixed block count, so the
// result is bit-identical from run to run; all_finite raises a device flag. Both read their
// result back through the context's pinned buffer, synchronising the op stream.
#include <cmath>
#include <cstring>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/elementwise_map.cuh"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct ScaleOp {
  float alpha;
  __device__ float operator()(float a, float) const { return a * alpha; }
};
struct ConstantOp {
  float value;
  __device__ float operator()(float, float) const { return value; }
};

template <typename TDst, typename TSrc>
__global__ void convert_kernel(TDst* dst, const TSrc* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    dst[i] = float_to<TDst>(load_as_float(src[i]));
}

// Pass 1: each block writes the sum of squares of its grid-stride share to partials[block].
template <typename T>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* partials) {
  __shared__ double scratch[32];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const double v = load_as_float(x[i]);
    acc += v * v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
// Pass 2: one block sums the partials in a fixed order; result stored as double bits.
__global__ void sum_partials_kernel(const double* partials, int count, uint64_t* result) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) result[0] = static_cast<uint64_t>(__double_as_longlong(acc));
}

template <typename T>
__global__ void non_finite_flag_kernel(const T* x, int64_t n, uint64_t* flag) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    bad |= !isfinite(load_as_float(x[i]));
  if (__syncthreads_or(bad) && threadIdx.x == 0) flag[0] = 1;
}

// ---- launchers --------------------------------------------------------------------------------
template <typename TDst>
void launch_convert(const CudaBackendState& st, Tensor dst, const Tensor& src) {
  dispatch_float(src.dtype(), "copy", [&]<typename TSrc>() {
    const int64_t n = dst.numel();
    const unsigned int blocks = grid_stride_blocks(st, n, 256);
    convert_kernel<TDst, TSrc><<<blocks, 256, 0, st.stream()>>>(
        static_cast<TDst*>(dst.raw()), static_cast<const TSrc*>(src.raw()), n);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void fill(DeviceContext& ctx, Tensor out, double value) {
  require_on_device(ctx, out, "fill", "out");
  const CudaBackendState& st = cuda_state(ctx);
  if (out.numel() == 0) return;
  if (out.dtype() == DType::kI32) {
    // Only constants whose 4 bytes repeat one byte can go through cudaMemsetAsync.
    const int32_t v = static_cast<int32_t>(value);
    if (v != 0 && v != -1)
      throw Error(ErrorKind::kInvalidArgument,
                  "fill on CUDA: int32 tensors can only be filled with 0 or -1");
    CUDA_CHECK(cudaMemsetAsync(out.raw(), v == 0 ? 0 : 0xff, out.nbytes(), st.stream()));
    return;
  }
  dispatch_float(out.dtype(), "fill", [&]<typename T>() {
    T* p = static_cast<T*>(out.raw());
    launch_map<T>(st, out.numel(), p, p, nullptr, ConstantOp{static_cast<float>(value)});
  });
}

void copy(DeviceContext& ctx, Tensor dst, const Tensor& src) {
  require_numel(src, dst.numel(), "copy", "src");
  const CudaBackendState& st = cuda_state(ctx);
  if (dst.numel() == 0) return;
  const bool dst_gpu = dst.device().is_cuda(), src_gpu = src.device().is_cuda();
  if (dst_gpu) require_on_device(ctx, dst, "copy", "dst");
  if (src_gpu) require_on_device(ctx, src, "copy", "src");
  if (dst.dtype() == src.dtype()) {
    const cudaMemcpyKind kind = dst_gpu && src_gpu ? cudaMemcpyDeviceToDevice
                                : dst_gpu          ? cudaMemcpyHostToDevice
                                : src_gpu          ? cudaMemcpyDeviceToHost
                                                   : cudaMemcpyHostToHost;
    CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), kind, st.stream()));
    // Host memory is pageable and owned by the caller: finish before returning.
    if (!(dst_gpu && src_gpu)) CUDA_CHECK(cudaStreamSynchronize(st.stream()));
    return;
  }
  if (!(dst_gpu && src_gpu))
    throw Error(ErrorKind::kInvalidArgument,
                std::string("copy on CUDA: converting ") + dtype_name(src.dtype()) + " on " +
                    src.device().to_string() + " to " + dtype_name(dst.dtype()) + " on " +
                    dst.device().to_string() +
                    " is not supported; copy between devices in one dtype, then convert");
  dispatch_float(dst.dtype(), "copy", [&]<typename TDst>() { launch_convert<TDst>(st, dst, src); });
}

void add(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& b) {
  require_on_device(ctx, out, "add", "out");
  require_on_device(ctx, a, "add", "a");
  require_on_device(ctx, b, "add", "b");
  require_same_dtype(out, a, "add", "out", "a");
  require_same_dtype(out, b, "add", "out", "b");
  require_numel(a, out.numel(), "add", "a");
  require_numel(b, out.numel(), "add", "b");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(out.dtype(), "add", [&]<typename T>() {
    launch_map<T>(st, out.numel(), static_cast<T*>(out.raw()), static_cast<const T*>(a.raw()),
                  static_cast<const T*>(b.raw()), AddOp{});
  });
}

void add_inplace(DeviceContext& ctx, Tensor acc, const Tensor& x) {
  require_on_device(ctx, acc, "add_inplace", "acc");
  require_on_device(ctx, x, "add_inplace", "x");
  require_same_dtype(acc, x, "add_inplace", "acc", "x");
  require_numel(x, acc.numel(), "add_inplace", "x");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(acc.dtype(), "add_inplace", [&]<typename T>() {
    T* p = static_cast<T*>(acc.raw());
    launch_map<T>(st, acc.numel(), p, p, static_cast<const T*>(x.raw()), AddOp{});
  });
}

void scale_inplace(DeviceContext& ctx, Tensor x, double alpha) {
  require_on_device(ctx, x, "scale_inplace", "x");
  const CudaBackendState& st = cuda_state(ctx);
  dispatch_float(x.dtype(), "scale_inplace", [&]<typename T>() {
    T* p = static_cast<T*>(x.raw());
    launch_map<T>(st, x.numel(), p, p, nullptr, ScaleOp{static_cast<float>(alpha)});
  });
}

double sum_squares(DeviceContext& ctx, const Tensor& x) {
  require_on_device(ctx, x, "sum_squares", "x");
  CudaBackendState& st = cuda_state(ctx);
  if (x.numel() == 0) return 0.0;
  constexpr int kThreads = 512;
  const int blocks = static_cast<int>(
      std::min<int64_t>(CudaBackendState::kMaxReductionBlocks, (x.numel() + kThreads - 1) / kThreads));
  dispatch_float(x.dtype(), "sum_squares", [&]<typename T>() {
    sum_squares_partial_kernel<T><<<blocks, kThreads, 0, st.stream()>>>(
        static_cast<const T*>(x.raw()), x.numel(), st.reduction_partials());
    CUDA_CHECK_LAUNCH();
  });
  sum_partials_kernel<<<1, 1024, 0, st.stream()>>>(st.reduction_partials(), blocks,
                                                   st.device_flags());
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaMemcpyAsync(st.host_flags(), st.device_flags(), sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, st.stream()));
  CUDA_CHECK(cudaStreamSynchronize(st.stream()));
  double result;
  std::memcpy(&result, st.host_flags(), sizeof(double));
  return result;
}

bool all_finite(DeviceContext& ctx, const Tensor& x) {
  require_on_device(ctx, x, "all_finite", "x");
  CudaBackendState& st = cuda_state(ctx);
  if (x.numel() == 0) return true;
  CUDA_CHECK(cudaMemsetAsync(st.device_flags(), 0, sizeof(uint64_t), st.stream()));
  dispatch_float(x.dtype(), "all_finite", [&]<typename T>() {
    const unsigned int blocks = grid_stride_blocks(st, x.numel(), 256);
    non_finite_flag_kernel<T><<<blocks, 256, 0, st.stream()>>>(
        static_cast<const T*>(x.raw()), x.numel(), st.device_flags());
    CUDA_CHECK_LAUNCH();
  });
  CUDA_CHECK(cudaMemcpyAsync(st.host_flags(), st.device_flags(), sizeof(uint64_t),
                             cudaMemcpyDeviceToHost, st.stream()));
  CUDA_CHECK(cudaStreamSynchronize(st.stream()));
  return st.host_flags()[0] == 0;
}

}  // namespace shardlm::ops::cuda
