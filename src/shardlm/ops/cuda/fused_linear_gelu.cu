// fused_linear_gelu.cu — the MLP's first projection fused with GELU (tanh approximation), and
// GELU's backward fused with that projection's bias gradient.
//
// Forward, one cuBLASLt GEMM: out^T[F,N] = gelu(W_cm[IC,F]^T · in_cm[IC,N] + bias) with the
// CUBLASLT_EPILOGUE_GELU_AUX_BIAS epilogue (GELU_AUX without bias), which also stores the GELU
// input (the "aux" matrix) into pre: same shape and column-major layout as D, leading dimension
// CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = F, aux dtype = the output dtype (the default). cuBLASLt
// requires the aux leading dimension to be a multiple of 8; we also require 16-byte aligned
// pre and bias pointers, tell the heuristic the real alignment of A/B/C/D, and fall back to
// linear_forward (GEMM + BIAS epilogue) + gelu_forward when a requirement fails or the heuristic
// offers no algorithm. fp32 always takes the fallback: fp32 runs exist to be compared with the
// CPU at ~1e-5, and the epilogue's GELU is not documented to be that exact (16-bit outputs
// round far more than any fast tanh errs). Row-major X[r,c] is column-major X^T with ld = c,
// exactly as in linear.cu. fp32 accumulation (CUBLAS_COMPUTE_32F), no TF32.
//
// Backward helper: dpre = dout * gelu'(pre) written in the same pass that sums the bias
// gradient, through column_reduce.cuh's chunked reduction. The term writes dpre[n, c..] as a
// side effect, which is sound because the kernel loads and adds every chunk exactly once; the
// sum is over the rounded dpre, as linear_backward would sum it, and accumulates (+=) into
// dbias deterministically. Without dbias it is gelu_backward.
#include <cublasLt.h>

#include <cmath>

#include "shardlm/ops/cuda/column_reduce.cuh"
#include "shardlm/ops/cuda/cublaslt_handles.h"
#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cuda_ops.h"

namespace shardlm::ops::cuda {
namespace {

// ---- kernels ------------------------------------------------------------------------------------
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// dout * gelu'(x) (the formula of activations.cu's GELU backward).
__device__ __forceinline__ float gelu_grad(float dout, float x) {
  const float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  const float th = tanhf(u);
  const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
  return dout * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
}

// Row n's chunks of dout and pre (kW columns from c): dpre = dout * gelu'(pre) is stored, and
// its rounded value is the term of dbias.
template <typename T, int kWidth>
struct GeluGradStoreTerm {
  static constexpr int kW = kWidth;
  struct Loaded {
    RowChunk<T, kW> dout, pre;
  };
  T* dpre;
  const T* dout;
  const T* pre;
  int64_t F;
  __device__ Loaded load(int64_t n, int64_t c) const {
    const int64_t i = n * F + c;
    return {load_row_chunk<kW>(dout + i), load_row_chunk<kW>(pre + i)};
  }
  __device__ void add(const Loaded& l, int64_t n, int64_t c, float (&s0)[kW], float (&)[kW]) const {
    float d[kW], x[kW];
    unpack_row_chunk<kW, T>(l.dout, d);
    unpack_row_chunk<kW, T>(l.pre, x);
#pragma unroll
    for (int j = 0; j < kW; ++j) {
      d[j] = load_as_float(float_to<T>(gelu_grad(d[j], x[j])));  // rounded as stored
      s0[j] += d[j];
    }
    store_chunk<kW>(dpre + n * F + c, d);
  }
};

// ---- cuBLASLt GEMM with the GELU_AUX epilogue ----------------------------------------------
// Largest power of two <= 256 dividing the address (the heuristic's alignment preference).
uint32_t pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align >>= 1;
  return align;
}

// The descriptors of one GEMM + GELU_AUX(_BIAS) call and the algorithm the heuristic picked.
// found() is false when a requirement of the epilogue is not met or no algorithm exists.
class GeluEpilogueGemm {
 public:
  GeluEpilogueGemm(const CudaBackendState& st, DType dtype, int64_t N, int64_t IC, int64_t F,
                   const void* in, const void* weight, const void* bias, void* out, void* pre)
      : st_(st), in_(in), weight_(weight), out_(out) {
    const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (dtype == DType::kF32) return;  // exact GELU for fp32 (see the banner)
    if (F % 8 != 0 || !aligned16(pre) || (bias != nullptr && !aligned16(bias))) return;
    const cudaDataType_t type = lt_data_type(dtype, "linear_gelu_forward");
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_.h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const cublasLtEpilogue_t epilogue =
        bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                sizeof(epilogue)));
    if (bias != nullptr) {
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                  &bias, sizeof(bias)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                  &type, sizeof(type)));
    }
    // The heuristic reads the aux pointer's value for its alignment: set it before asking.
    const int64_t aux_ld = F;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                &pre, sizeof(pre)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                &aux_ld, sizeof(aux_ld)));
    // A = W stored [IC, F] column-major (op T), B = in [IC, N], D = out [F, N].
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_.h, type, IC, F, IC));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_.h, type, IC, N, IC));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_.h, type, F, N, F));
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_.h));
    const uint64_t workspace = CudaBackendState::kCublasWorkspaceBytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref_.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
    const uint32_t align_a = pointer_alignment(weight), align_b = pointer_alignment(in),
                   align_d = pointer_alignment(out);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref_.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref_.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref_.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref_.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));
    int found = 0;
    // NOT_SUPPORTED here means "no algorithm for this epilogue/type/shape": fall back.
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        st.cublaslt(), desc_.h, a_.h, b_.h, d_.h, d_.h, pref_.h, 1, &heuristic_, &found);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED) return;
    CUBLAS_CHECK(status);
    found_ = found > 0;
  }
  GeluEpilogueGemm(const GeluEpilogueGemm&) = delete;
  GeluEpilogueGemm& operator=(const GeluEpilogueGemm&) = delete;

  bool found() const { return found_; }

  void run() const {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(st_.cublaslt(), desc_.h, &alpha, weight_, a_.h, in_, b_.h, &beta,
                                out_, d_.h, out_, d_.h, &heuristic_.algo, st_.cublas_workspace(),
                                CudaBackendState::kCublasWorkspaceBytes, st_.stream()));
  }

 private:
  const CudaBackendState& st_;
  const void* in_;
  const void* weight_;
  void* out_;
  LtMatmulDesc desc_;
  LtLayout a_, b_, d_;
  LtPreference pref_;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  bool found_ = false;
};

struct GemmDims {
  int64_t N, IC, F;
};
GemmDims check_linear_gelu(const DeviceContext& ctx, const Tensor& out, const Tensor& pre,
                           const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear_gelu_forward";
  require_on_device(ctx, out, op, "out");
  require_on_device(ctx, pre, op, "pre");
  require_on_device(ctx, in, op, "in");
  require_on_device(ctx, weight, op, "weight");
  require_same_dtype(out, pre, op, "out", "pre");
  require_same_dtype(out, in, op, "out", "in");
  require_same_dtype(out, weight, op, "out", "weight");
  if (weight.rank() != 2 || in.rank() < 1 || in.size(in.rank() - 1) != weight.size(1) ||
      weight.size(1) == 0)
    throw Error(ErrorKind::kInvalidArgument,
                std::string(op) + " on CUDA: weight " + weight.shape().to_string() +
                    " must be [F, IC] with IC >= 1 the last dim of in " + in.shape().to_string());
  const int64_t F = weight.size(0), IC = weight.size(1), N = in.numel() / IC;
  require_numel(out, N * F, op, "out");
  require_numel(pre, N * F, op, "pre");
  if (bias.defined()) {
    require_on_device(ctx, bias, op, "bias");
    require_same_dtype(out, bias, op, "out", "bias");
    require_numel(bias, F, op, "bias");
  }
  return {N, IC, F};
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------
bool linear_gelu_uses_epilogue(DeviceContext& ctx, const Tensor& out, const Tensor& pre,
                               const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const GemmDims d = check_linear_gelu(ctx, out, pre, in, weight, bias);
  if (d.N * d.F == 0) return false;
  const GeluEpilogueGemm gemm(cuda_state(ctx), out.dtype(), d.N, d.IC, d.F, in.raw(),
                              weight.raw(), bias.defined() ? bias.raw() : nullptr, out.raw(),
                              pre.raw());
  return gemm.found();
}

void linear_gelu_forward(DeviceContext& ctx, Tensor out, Tensor pre, const Tensor& in,
                         const Tensor& weight, const Tensor& bias) {
  const GemmDims d = check_linear_gelu(ctx, out, pre, in, weight, bias);
  if (d.N * d.F == 0) return;
  const GeluEpilogueGemm gemm(cuda_state(ctx), out.dtype(), d.N, d.IC, d.F, in.raw(),
                              weight.raw(), bias.defined() ? bias.raw() : nullptr, out.raw(),
                              pre.raw());
  if (gemm.found()) {
    gemm.run();
    return;
  }
  linear_forward(ctx, pre, in, weight, bias);
  gelu_forward(ctx, out, pre);
}

void gelu_backward_bias_grad(DeviceContext& ctx, Tensor dpre, Tensor dbias, const Tensor& dout,
                             const Tensor& pre) {
  const char* op = "gelu_backward_bias_grad";
  if (!dbias.defined()) return gelu_backward(ctx, dpre, dout, pre);
  require_on_device(ctx, dpre, op, "dpre");
  require_on_device(ctx, dbias, op, "dbias");
  require_on_device(ctx, dout, op, "dout");
  require_on_device(ctx, pre, op, "pre");
  require_same_dtype(dpre, dout, op, "dpre", "dout");
  require_same_dtype(dpre, pre, op, "dpre", "pre");
  require_same_dtype(dpre, dbias, op, "dpre", "dbias");
  const int64_t F = pre.rank() >= 1 ? pre.size(pre.rank() - 1) : 0;
  if (F == 0) return;
  const int64_t N = pre.numel() / F;
  require_numel(dpre, N * F, op, "dpre");
  require_numel(dout, N * F, op, "dout");
  require_numel(dbias, F, op, "dbias");
  if (N == 0) return;
  CudaBackendState& st = cuda_state(ctx);
  dispatch_float(dpre.dtype(), op, [&]<typename T>() {
    T* dp = static_cast<T*>(dpre.raw());
    const T* d = static_cast<const T*>(dout.raw());
    const T* p = static_cast<const T*>(pre.raw());
    launch_column_reduce_chunked<T, 1>(
        st, N, F, aligned16(dp) && aligned16(d) && aligned16(p),
        [&]<int kW>() { return GeluGradStoreTerm<T, kW>{dp, d, p, F}; },
        static_cast<T*>(dbias.raw()), static_cast<T*>(nullptr));
  });
}

}  // namespace shardlm::ops::cuda
