// linear.cu — fully connected layer on cuBLASLt: out = in @ W^T (+ bias), and its backward.
//
// Algorithms: three GEMMs on cuBLASLt with fp32 accumulation (CUBLAS_COMPUTE_32F: fp32 inputs
// stay true fp32, no TF32, so the fp32 path matches the CPU to ~1e-6; bf16/fp16 run on the
// tensor cores). Row-major X[r,c] is column-major X^T with ld = c, so:
//   forward : out^T[OC,N]  = (W_cm[IC,OC])^T · in_cm[IC,N]      (TN), bias via the BIAS epilogue
//   din     : din^T[IC,N]  = W_cm[IC,OC] · dout_cm[OC,N]         (NN), beta = 0 (assign)
//   dweight : dW^T[IC,OC] += in_cm[IC,N] · (dout_cm[OC,N])^T     (NT), beta = 1 (accumulate)
// linear_weight_grad runs the dweight GEMM alone, with beta 0 or 1, and for bf16/fp16 inputs
// may write an fp32 D: the fp32 main gradient directly (gradient-accumulation fusion), no 16-bit
// gradient and no later pass adding it in.
// dbias += column sums of dout goes through column_reduce.cuh's chunked reduction (16-byte
// loads; cuBLASLt's BGRAD epilogue overwrites, and parameter gradients must accumulate).
// Plans (descriptor, layouts, algorithm) are cached per shape in the rank's CUDA state
// (gemm_plan_cache.h): a repeated shape only sets the bias pointer and launches. bf16/fp16 GEMMs
// with beta = 0 (forward, din) time the heuristic's top candidates on first use and keep the
// fastest, unless CudaBackendState::set_gemm_autotune(false); fp32 and the beta = 1 dweight GEMM
// take the heuristic's first choice (deterministic across processes / must not run twice).
#include <cublasLt.h>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"
#include "shardlm/ops/cuda/gemm_plan_cache.h"

namespace shardlm::ops::cuda {
namespace {

// D[m,n] (column-major, ld = m) = op(A) op(B) + beta * D (+ bias[m] when bias != null), through
// the rank's cached plan for this shape (gemm_plan_cache.h).
// A is stored (trans_a ? k x m : m x k) with leading dimension lda; B likewise (k x n / n x k).
void lt_matmul(CudaBackendState& st, DType dtype, bool trans_a, bool trans_b, int64_t m,
               int64_t n, int64_t k, const void* A, int64_t lda, const void* B, int64_t ldb,
               void* D, float beta, const void* bias, const char* what, bool wide_output = false) {
  const GemmCall call{dtype, trans_a, trans_b, m, n, k, A, lda, B, ldb, D, /*ldd=*/m, beta, bias,
                      wide_output};
  run_cached_gemm(st, call, "linear", what);
}

// Row n's chunk of dout (kW columns from c): the terms of dbias.
template <typename T, int kWidth>
struct BiasGradTerm {
  static constexpr int kW = kWidth;
  using Loaded = RowChunk<T, kW>;
  const T* dout;
  int64_t OC;
  __device__ Loaded load(int64_t n, int64_t c) const { return load_row_chunk<kW>(dout + n * OC + c); }
  __device__ void add(const Loaded& chunk, int64_t, int64_t, float (&s0)[kW], float (&)[kW]) const {
    float v[kW];
    unpack_row_chunk<kW, T>(chunk, v);
#pragma unroll
    for (int j = 0; j < kW; ++j) s0[j] += v[j];
  }
};

struct LinearDims {
  int64_t N, IC, OC;
};
LinearDims linear_dims(const Tensor& in, const Tensor& weight, const char* op) {
  if (weight.rank() != 2)
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: weight must be [OC,IC], got " +
                                                 weight.shape().to_string());
  const int64_t OC = weight.size(0), IC = weight.size(1);
  if (in.size(in.rank() - 1) != IC)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: in " + in.shape().to_string() +
                    " does not end in IC = " + std::to_string(IC) + " of weight " +
                    weight.shape().to_string());
  return {IC == 0 ? 0 : in.numel() / IC, IC, OC};
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
void linear_forward(DeviceContext& ctx, Tensor out, const Tensor& in, const Tensor& weight,
                    const Tensor& bias) {
  const char* op = "linear_forward";
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_same_dtype(out, in, op, "out", "in");
  require_same_dtype(out, weight, op, "out", "weight");
  const LinearDims dims = linear_dims(in, weight, op);
  require_numel(out, dims.N * dims.OC, op, "out");
  const bool has_bias = bias.defined();
  if (has_bias) {
    require_on_device(ctx, bias, op, "bias");
    require_same_dtype(out, bias, op, "out", "bias");
    require_numel(bias, dims.OC, op, "bias");
  }
  if (dims.N * dims.OC == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  if (dims.IC == 0)
    throw Error(ErrorKind::kInvalidArgument, "linear_forward on CUDA: IC = 0 (empty weight)");
  lt_matmul(st, out.dtype(), /*trans_a=*/true, /*trans_b=*/false, dims.OC, dims.N, dims.IC,
            weight.raw(), dims.IC, in.raw(), dims.IC, out.raw(), 0.0f,
            has_bias ? bias.raw() : nullptr, "forward");
}

void linear_backward(DeviceContext& ctx, Tensor din, Tensor dweight, Tensor dbias,
                     const Tensor& dout, const Tensor& in, const Tensor& weight) {
  const char* op = "linear_backward";
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_same_dtype(dout, in, op, "dout", "in");
  require_same_dtype(dout, weight, op, "dout", "weight");
  const LinearDims dims = linear_dims(in, weight, op);
  require_numel(dout, dims.N * dims.OC, op, "dout");
  const bool has_din = din.defined(), has_dw = dweight.defined(), has_db = dbias.defined();
  if (has_din) {
    require_on_device(ctx, din, op, "din");
    require_same_dtype(dout, din, op, "dout", "din");
    require_numel(din, in.numel(), op, "din");
  }
  if (has_dw) {
    require_on_device(ctx, dweight, op, "dweight");
    require_same_dtype(dout, dweight, op, "dout", "dweight");
    require_numel(dweight, weight.numel(), op, "dweight");
  }
  if (has_db) {
    require_on_device(ctx, dbias, op, "dbias");
    require_same_dtype(dout, dbias, op, "dout", "dbias");
    require_numel(dbias, dims.OC, op, "dbias");
  }
  CudaBackendState& st = cuda_state(ctx);
  if (has_din && dims.N * dims.IC > 0) {
    if (dims.OC == 0)
      fill(ctx, din, 0.0);
    else
      lt_matmul(st, dout.dtype(), false, false, dims.IC, dims.N, dims.OC, weight.raw(), dims.IC,
                dout.raw(), dims.OC, din.raw(), 0.0f, nullptr, "input-gradient");
  }
  if (has_dw && dims.IC * dims.OC > 0 && dims.N > 0)
    lt_matmul(st, dout.dtype(), false, true, dims.IC, dims.OC, dims.N, in.raw(), dims.IC,
              dout.raw(), dims.OC, dweight.raw(), 1.0f, nullptr, "weight-gradient");
  if (has_db && dims.N > 0) {
    dispatch_float(dout.dtype(), op, [&]<typename T>() {
      const T* d = static_cast<const T*>(dout.raw());
      launch_column_reduce_chunked<T, 1>(
          st, dims.N, dims.OC, aligned16(d),
          [&]<int kW>() { return BiasGradTerm<T, kW>{d, dims.OC}; },
          static_cast<T*>(dbias.raw()), static_cast<T*>(nullptr));
    });
  }
}

void linear_weight_grad(DeviceContext& ctx, Tensor dweight, const Tensor& dout, const Tensor& in,
                        bool accumulate) {
  const char* op = "linear_weight_grad";
  require_on_device(ctx, dweight, op, "dweight");
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, in, op, "in");
  require_same_dtype(dout, in, op, "dout", "in");
  const bool wide = dweight.dtype() != in.dtype();
  if (wide && !(dweight.dtype() == DType::kF32 &&
                (in.dtype() == DType::kBF16 || in.dtype() == DType::kF16)))
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: a " + dtype_name(dweight.dtype()) + " dweight for " +
                    dtype_name(in.dtype()) + " activations (wider gradients: fp32 for bf16/fp16)");
  const LinearDims dims = linear_dims(in, dweight, op);
  require_numel(dout, dims.N * dims.OC, op, "dout");
  if (dims.IC * dims.OC == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  if (dims.N == 0) {
    if (!accumulate) fill(ctx, dweight, 0.0);
    return;
  }
  // dW^T[IC,OC] (= dW row-major) = in_cm[IC,N] · dout_cm[OC,N]^T, as linear_backward's dweight.
  lt_matmul(st, in.dtype(), false, true, dims.IC, dims.OC, dims.N, in.raw(), dims.IC, dout.raw(),
            dims.OC, dweight.raw(), accumulate ? 1.0f : 0.0f, nullptr,
            wide ? "weight-gradient (fp32 main gradient)" : "weight-gradient", wide);
}

}  // namespace shardlm::ops::cuda
