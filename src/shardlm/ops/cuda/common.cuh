// common.cuh — shared pieces of the CUDA op files: check macros that turn CUDA/cuBLAS failures
// into shardlm::Error (file:line + the library's error string), fp32/bf16/fp16 load/store
// helpers (all arithmetic is fp32), 16-byte vector access, warp/block reductions, dtype
// dispatch, and the argument checks every entry point runs.
//
// Include only from .cu files (device code). Host-only code includes cuda_context.h.
//
//   CUDA_CHECK(cudaMemsetAsync(p, 0, n, stream));
//   SHARDLM_DISPATCH_FLOAT(t.dtype(), "gelu_forward", [&]<typename T>() { launch<T>(...); });
//   float v = load_as_float(ptr[i]);  store_from_float(&ptr[i], v);
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/ops/cuda/arg_checks.h"
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops::cuda {

// ---- error checks ----------------------------------------------------------------------------
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  const ErrorKind kind =
      err == cudaErrorMemoryAllocation ? ErrorKind::kOutOfMemory : ErrorKind::kInternal;
  throw Error(kind, std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                        cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}
[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  throw Error(ErrorKind::kInternal, std::string(file) + ":" + std::to_string(line) + ": " +
                                        expr + " failed: cuBLAS status " +
                                        std::to_string(static_cast<int>(status)) + " (" +
                                        cublasLtGetStatusName(status) + ": " +
                                        cublasLtGetStatusString(status) + ")");
}

#define CUDA_CHECK(expr)                                                                    \
  do {                                                                                      \
    const cudaError_t shardlm_err_ = (expr);                                                \
    if (shardlm_err_ != cudaSuccess)                                                        \
      ::shardlm::ops::cuda::throw_cuda_error(shardlm_err_, #expr, __FILE__, __LINE__);      \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                      \
    const cublasStatus_t shardlm_st_ = (expr);                                              \
    if (shardlm_st_ != CUBLAS_STATUS_SUCCESS)                                               \
      ::shardlm::ops::cuda::throw_cublas_error(shardlm_st_, #expr, __FILE__, __LINE__);     \
  } while (0)

// After every kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// ---- element types ---------------------------------------------------------------------------
__device__ __forceinline__ float load_as_float(float v) { return v; }
__device__ __forceinline__ float load_as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float load_as_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T float_to(float v);
template <>
__device__ __forceinline__ float float_to<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 float_to<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half float_to<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void store_from_float(T* p, float v) { *p = float_to<T>(v); }

// A 16-byte bundle of elements, for vectorised global loads/stores (LDG.128 / STG.128).
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// kW consecutive elements as fp32: one 16-byte access when kW == Vec16<T>::kSize, else kW == 1.
template <int kW, typename T>
__device__ __forceinline__ void load_chunk(const T* p, float (&v)[kW]) {
  if constexpr (kW == 1) {
    v[0] = load_as_float(*p);
  } else {
    static_assert(kW == Vec16<T>::kSize, "chunks are one element or 16 bytes");
    const Vec16<T> c = *reinterpret_cast<const Vec16<T>*>(p);
#pragma unroll
    for (int k = 0; k < kW; ++k) v[k] = load_as_float(c.v[k]);
  }
}
template <int kW, typename T>
__device__ __forceinline__ void store_chunk(T* p, const float (&v)[kW]) {
  if constexpr (kW == 1) {
    *p = float_to<T>(v[0]);
  } else {
    static_assert(kW == Vec16<T>::kSize, "chunks are one element or 16 bytes");
    Vec16<T> c;
#pragma unroll
    for (int k = 0; k < kW; ++k) c.v[k] = float_to<T>(v[k]);
    *reinterpret_cast<Vec16<T>*>(p) = c;
  }
}

// True when every pointer is 16-byte aligned (vector path allowed).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// One operand of a kernel that walks several arrays in step with vector accesses after a
// scalar head: its pointer (nullptr: not used), element size and the alignment its vector
// access needs.
struct VectorOperand {
  const void* ptr;
  int elem_bytes;
  int align;
};
// The smallest head h < width such that every operand advanced by h elements is aligned (the
// kernel then takes elements [0, h) one by one and vectors from h on), or -1 when no head
// aligns them all (pointers misaligned relative to each other: scalar only).
inline int vector_head(int width, std::initializer_list<VectorOperand> operands) {
  for (int h = 0; h < width; ++h) {
    bool aligned = true;
    for (const VectorOperand& o : operands)
      if (o.ptr != nullptr &&
          (reinterpret_cast<uintptr_t>(o.ptr) + static_cast<uintptr_t>(h) * o.elem_bytes) %
                  static_cast<uintptr_t>(o.align) != 0)
        aligned = false;
    if (aligned) return h;
  }
  return -1;
}

// ---- reductions -------------------------------------------------------------------------------
template <typename F>
__device__ __forceinline__ F warp_sum(F v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` holds >= 32 values of F in shared memory; the call begins and ends with a barrier
// so it can be called repeatedly with the same scratch.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  F total = lane < nwarps ? scratch[lane] : F(0);
  total = warp_sum(total);
  return total;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(m);
}

// ---- launch helpers ---------------------------------------------------------------------------
inline unsigned int ceil_div_u(int64_t a, int64_t b) {
  return static_cast<unsigned int>((a + b - 1) / b);
}
// Grid for a grid-stride loop over `work` items with `threads` per block: enough blocks to
// fill the device several times over, never more than needed.
inline unsigned int grid_stride_blocks(const CudaBackendState& st, int64_t work, int threads) {
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(st.multiprocessor_count()) * 16;
  return static_cast<unsigned int>(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

// ---- dtype dispatch ---------------------------------------------------------------------------
// Calls fn.template operator()<T>() with T = float, __nv_bfloat16 or __half for the float
// dtypes the CUDA backend computes in; anything else throws kInvalidArgument naming the op.
template <typename Fn>
void dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: fn.template operator()<float>(); return;
    case DType::kBF16: fn.template operator()<__nv_bfloat16>(); return;
    case DType::kF16: fn.template operator()<__half>(); return;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: dtype " + dtype_name(dtype) +
                      " is not supported (use fp32, bf16 or fp16)");
  }
}

}  // namespace shardlm::ops::cuda
