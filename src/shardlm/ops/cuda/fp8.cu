// fp8.cu — the CUDA fp8 ops (ops.h "fp8"): abs_max, fp8_scale_from_amax, fp8_quantize and the
// per-tensor scaled fp8 GEMM. The CPU backend (ops/cpu/fp8.cc) is the reference: abs_max and the
// scales match it exactly, the quantised codes byte for byte, the GEMM to rounding.
//
// Algorithms:
//   abs_max   grid-stride block reduction (16-byte loads when aligned); each block folds its
//             maximum into amax[0] with an integer atomicMax on the float's bits (values are
//             >= +0, whose bit patterns order like the floats; amax is zeroed first on the
//             stream). fmaxf drops NaN, so NaN elements are skipped as on the CPU.
//   scales    one thread per element, IEEE division (__fdiv_rn: correctly rounded whatever the
//             compile flags) and a multiplication by the exact 2^-margin (= ldexpf, rounded
//             once), so the bits equal the CPU's.
//   quantize  32x32 tiles: a block reads a tile of `in` row-major (coalesced), forms
//             fp32(x) * scale with __fmul_rn and converts with __nv_cvt_float_to_fp8 (round to
//             nearest even, SATFINITE), writes q row-major and, through shared memory, q_t
//             column-major, so both writes are coalesced.
//   gemm      cuBLASLt through the rank's plan cache (gemm_plan_cache.h), the scale_inv factors
//             passed as device pointers (no host sync). Row-major out[M,N] = a[M,K] · b[N,K]^T is
//             column-major D'[N,M] = (b_cm[K,N])^T · a_cm[K,M]: cuBLASLt's A is b, its B is a,
//             "TN" (the only fp8 form Hopper runs), m' = N, n' = M, and bias[N] is per row of D':
//             the BIAS epilogue.
#include <cuda_fp8.h>

#include <cfloat>
#include <cmath>
#include <string>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/gemm_plan_cache.h"
#include "shardlm/tensor/fp8.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;        // quantize: a tile is kTile x kTile elements
constexpr int kTileRowStep = 8;  // quantize: a block is kTile x kTileRowStep threads

// ---- kernels ------------------------------------------------------------------------------------
template <typename T>
__global__ void abs_max_kernel(const T* __restrict__ x, int64_t n, bool vector, float* amax) {
  __shared__ float scratch[32];
  constexpr int kW = Vec16<T>::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float m = 0.0f;
  int64_t scalar_from = 0;
  if (vector) {
    const int64_t chunks = n / kW;
    for (int64_t i = tid; i < chunks; i += stride) {
      float v[kW];
      load_chunk<kW>(x + i * kW, v);
#pragma unroll
      for (int k = 0; k < kW; ++k) m = fmaxf(m, fabsf(v[k]));
    }
    scalar_from = chunks * kW;
  }
  for (int64_t i = scalar_from + tid; i < n; i += stride) m = fmaxf(m, fabsf(load_as_float(x[i])));
  m = block_max(m, scratch);
  if (threadIdx.x == 0 && m > 0.0f) atomicMax(reinterpret_cast<int*>(amax), __float_as_int(m));
}

__global__ void scale_from_amax_kernel(float* scale, float* scale_inv, const float* amax,
                                       int64_t n, float format_max, float pow2_margin) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float a = amax[i];
    float v = 1.0f;
    if (a != 0.0f) {
      v = __fmul_rn(__fdiv_rn(format_max, a), pow2_margin);
      if (isinf(v)) v = FLT_MAX;
    }
    scale[i] = v;
    scale_inv[i] = __fdiv_rn(1.0f, v);
  }
}

// One block per column tile (blockIdx.x) and a grid-stride walk over row tiles (blockIdx.y), so
// any N fits the grid's 65535 limit in y. q or q_t may be null (never both).
template <typename T>
__global__ void __launch_bounds__(kTile * kTileRowStep)
    quantize_kernel(const T* __restrict__ in, uint8_t* __restrict__ q, uint8_t* __restrict__ q_t,
                    int64_t N, int64_t C, const float* __restrict__ scale,
                    __nv_fp8_interpretation_t format) {
  // Codes kept as words: the transposed read tile[tx][r] then hits 32 distinct banks.
  __shared__ uint32_t tile[kTile][kTile + 1];
  const float s = *scale;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t row_tiles = (N + kTile - 1) / kTile;
  for (int64_t t = blockIdx.y; t < row_tiles; t += gridDim.y) {
    const int64_t n0 = t * kTile;
    const int64_t c = c0 + tx;
    for (int r = ty; r < kTile; r += kTileRowStep) {
      const int64_t n = n0 + r;
      if (n < N && c < C) {
        // The product in fp32, unfused, then one rounding to fp8: the CPU's codes exactly.
        const float v = __fmul_rn(load_as_float(in[n * C + c]), s);
        const uint8_t code = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, format);
        if (q != nullptr) q[n * C + c] = code;
        tile[r][tx] = code;
      }
    }
    if (q_t != nullptr) {  // uniform over the block: the barriers are safe
      __syncthreads();
      const int64_t n = n0 + tx;
      for (int r = ty; r < kTile; r += kTileRowStep) {
        const int64_t cc = c0 + r;
        if (n < N && cc < C) q_t[cc * N + n] = static_cast<uint8_t>(tile[tx][r]);
      }
      __syncthreads();  // the next row tile rewrites the tile
    }
  }
}

// The GEMM with K = 0 (no products): out = (accumulate ? out : 0) + bias[col], as the CPU.
template <typename T>
__global__ void empty_k_kernel(T* out, const T* bias, int64_t numel, int64_t N, bool accumulate) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    float v = accumulate ? load_as_float(out[i]) : 0.0f;
    if (bias != nullptr) v += load_as_float(bias[i % N]);
    out[i] = float_to<T>(v);
  }
}

// ---- helpers ------------------------------------------------------------------------------------
__nv_fp8_interpretation_t fp8_interpretation(DType format, const char* op, const char* name) {
  if (format == DType::kF8E4M3) return __NV_E4M3;
  if (format == DType::kF8E5M2) return __NV_E5M2;
  throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: '" + name + "' is " +
                                               dtype_name(format) +
                                               ", expected fp8_e4m3 or fp8_e5m2");
}

// require_on_device, except that an empty tensor (no allocation: null data) passes when it is
// on the context's device: the ops follow the CPU on empty inputs (K = 0 GEMMs, say).
void require_on_device_or_empty(const DeviceContext& ctx, const Tensor& t, const char* op,
                                const char* name) {
  if (t.defined() && t.numel() == 0 && t.device() == ctx.device()) return;
  require_on_device(ctx, t, op, name);
}

void require_factor(const DeviceContext& ctx, const Tensor& t, const char* op, const char* name) {
  require_on_device(ctx, t, op, name);
  require_dtype(t, DType::kF32, op, name);
  require_numel(t, 1, op, name);
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void abs_max(DeviceContext& ctx, Tensor amax, const Tensor& in) {
  const char* op = "abs_max";
  require_factor(ctx, amax, op, "amax");
  require_on_device_or_empty(ctx, in, op, "in");
  const CudaBackendState& st = cuda_state(ctx);
  CUDA_CHECK(cudaMemsetAsync(amax.raw(), 0, sizeof(float), st.stream()));
  const int64_t n = in.numel();
  if (n == 0) return;
  dispatch_float(in.dtype(), op, [&]<typename T>() {
    const T* x = static_cast<const T*>(in.raw());
    const bool vector = aligned16(x);
    const int64_t work = vector ? (n + Vec16<T>::kSize - 1) / Vec16<T>::kSize : n;
    abs_max_kernel<T><<<grid_stride_blocks(st, work, kThreads), kThreads, 0, st.stream()>>>(
        x, n, vector, static_cast<float*>(amax.raw()));
    CUDA_CHECK_LAUNCH();
  });
}

void fp8_scale_from_amax(DeviceContext& ctx, Tensor scale, Tensor scale_inv, const Tensor& amax,
                         DType format, int margin) {
  const char* op = "fp8_scale_from_amax";
  require_on_device(ctx, amax, op, "amax");
  require_dtype(amax, DType::kF32, op, "amax");
  require_on_device(ctx, scale, op, "scale");
  require_dtype(scale, DType::kF32, op, "scale");
  require_numel(scale, amax.numel(), op, "scale");
  require_on_device(ctx, scale_inv, op, "scale_inv");
  require_dtype(scale_inv, DType::kF32, op, "scale_inv");
  require_numel(scale_inv, amax.numel(), op, "scale_inv");
  fp8_interpretation(format, op, "format");  // throws unless fp8
  const float max = static_cast<float>(fp8_max(format));
  // 2^-margin is a normal float for these margins, so multiplying by it rounds like ldexpf.
  if (margin < 0 || margin > 64)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: margin " +
                                                 std::to_string(margin) + " is not in [0, 64]");
  const float pow2_margin = std::ldexp(1.0f, -margin);
  const int64_t n = amax.numel();
  if (n == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  scale_from_amax_kernel<<<grid_stride_blocks(st, n, kThreads), kThreads, 0, st.stream()>>>(
      static_cast<float*>(scale.raw()), static_cast<float*>(scale_inv.raw()),
      static_cast<const float*>(amax.raw()), n, max, pow2_margin);
  CUDA_CHECK_LAUNCH();
}

void fp8_quantize(DeviceContext& ctx, Tensor q, Tensor q_t, const Tensor& in, const Tensor& scale) {
  const char* op = "fp8_quantize";
  require_on_device_or_empty(ctx, in, op, "in");
  require_factor(ctx, scale, op, "scale");
  if (!q.defined() && !q_t.defined())
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: give q, q_t or both (nothing to write)");
  const int64_t C = in.rank() == 0 ? 1 : in.size(in.rank() - 1);
  const int64_t N = C == 0 ? 0 : in.numel() / C;
  DType format = DType::kF8E4M3;
  if (q.defined()) {
    require_on_device_or_empty(ctx, q, op, "q");
    require_numel(q, in.numel(), op, "q");
    format = q.dtype();
  }
  if (q_t.defined()) {
    require_on_device_or_empty(ctx, q_t, op, "q_t");
    require_numel(q_t, in.numel(), op, "q_t");
    if (q.defined()) require_same_dtype(q, q_t, op, "q", "q_t");
    format = q_t.dtype();
  }
  const __nv_fp8_interpretation_t interpretation =
      fp8_interpretation(format, op, q.defined() ? "q" : "q_t");
  if (N * C == 0) return;
  const CudaBackendState& st = cuda_state(ctx);
  const int64_t row_tiles = (N + kTile - 1) / kTile;
  const dim3 grid(ceil_div_u(C, kTile),
                  static_cast<unsigned int>(row_tiles < 65535 ? row_tiles : 65535));
  const dim3 block(kTile, kTileRowStep);
  dispatch_float(in.dtype(), op, [&]<typename T>() {
    quantize_kernel<T><<<grid, block, 0, st.stream()>>>(
        static_cast<const T*>(in.raw()), q.defined() ? static_cast<uint8_t*>(q.raw()) : nullptr,
        q_t.defined() ? static_cast<uint8_t*>(q_t.raw()) : nullptr, N, C,
        static_cast<const float*>(scale.raw()), interpretation);
    CUDA_CHECK_LAUNCH();
  });
}

void fp8_gemm(DeviceContext& ctx, Tensor out, const Tensor& a, const Tensor& a_scale_inv,
              const Tensor& b, const Tensor& b_scale_inv, const Tensor& bias, bool accumulate) {
  const char* op = "fp8_gemm";
  require_on_device_or_empty(ctx, out, op, "out");
  require_on_device_or_empty(ctx, a, op, "a");
  require_on_device_or_empty(ctx, b, op, "b");
  require_factor(ctx, a_scale_inv, op, "a_scale_inv");
  require_factor(ctx, b_scale_inv, op, "b_scale_inv");
  fp8_interpretation(a.dtype(), op, "a");
  fp8_interpretation(b.dtype(), op, "b");
  if (a.dtype() == DType::kF8E5M2 && b.dtype() == DType::kF8E5M2)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: a and b are both fp8_e5m2; one must be fp8_e4m3");
  const DType out_dtype = out.dtype();
  if (out_dtype != DType::kBF16 && out_dtype != DType::kF16 && out_dtype != DType::kF32)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: out is " + dtype_name(out_dtype) +
                    "; cuBLASLt's fp8 GEMMs write bf16, fp16 or fp32");
  if (a.rank() != 2 || b.rank() != 2 || a.size(1) != b.size(1))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: a " + a.shape().to_string() + " and b " +
                    b.shape().to_string() + " must be [M,K] and [N,K]");
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  require_numel(out, M * N, op, "out");
  const bool has_bias = bias.defined();
  if (has_bias) {
    require_on_device_or_empty(ctx, bias, op, "bias");
    require_same_dtype(out, bias, op, "out", "bias");
    require_numel(bias, N, op, "bias");
    if (out_dtype == DType::kF32)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: a bias needs a bf16 or fp16 out (cuBLASLt's fp8 "
                                    "GEMM into fp32 takes only a bf16 bias); add it separately");
  }
  if (M * N == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  if (K == 0) {
    dispatch_float(out_dtype, op, [&]<typename T>() {
      empty_k_kernel<T><<<grid_stride_blocks(st, M * N, kThreads), kThreads, 0, st.stream()>>>(
          static_cast<T*>(out.raw()), has_bias ? static_cast<const T*>(bias.raw()) : nullptr,
          M * N, N, accumulate);
      CUDA_CHECK_LAUNCH();
    });
    return;
  }
  if (M % 16 != 0 || N % 16 != 0 || K % 16 != 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: M=" + std::to_string(M) + " N=" + std::to_string(N) +
                    " K=" + std::to_string(K) +
                    " must all be multiples of 16 (cuBLASLt's fp8 GEMMs); pad the hidden sizes or "
                    "tokens per micro-batch, or run this layer in bf16");
  const auto require_aligned = [&](const Tensor& t, const char* name) {
    if (!aligned16(t.raw()))
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: '" + name +
                      "' is not 16-byte aligned (cuBLASLt's fp8 GEMMs need aligned operands)");
  };
  require_aligned(a, "a");
  require_aligned(b, "b");
  require_aligned(out, "out");
  // cuBLASLt's A is b (its scale b_scale_inv), its B is a: see the banner.
  GemmCall call{out_dtype, /*trans_a=*/true, /*trans_b=*/false, /*m=*/N, /*n=*/M, /*k=*/K,
                b.raw(), /*lda=*/K, a.raw(), /*ldb=*/K, out.raw(), /*ldd=*/N,
                /*beta=*/accumulate ? 1.0f : 0.0f, has_bias ? bias.raw() : nullptr};
  call.fp8 = GemmFp8{b.dtype(), a.dtype(), static_cast<const float*>(b_scale_inv.raw()),
                     static_cast<const float*>(a_scale_inv.raw())};
  run_cached_gemm(st, call, op, accumulate ? "accumulating fp8" : "fp8");
}

}  // namespace shardlm::ops::cuda
