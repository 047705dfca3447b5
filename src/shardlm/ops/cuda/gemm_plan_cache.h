// gemm_plan_cache.h — cuBLASLt GEMMs run through plans cached per call shape: the matmul
// descriptor, the three layouts and the chosen algorithm are built on the first call of a shape
// and reused, so later calls only set the per-call pointers (bias; fp8 scales) and launch (no
// descriptor creation, no heuristic query).
//
// One GEMM, fp32 accumulation (CUBLAS_COMPUTE_32F, no TF32):
//   D[m,n] (column-major, ld = ldd) = op(A) op(B) + beta * D (+ bias[m] via the BIAS epilogue)
// fp8 GEMMs (GemmCall::fp8 set) read A and B as fp8 codes scaled by the device factors
// *a_scale, *b_scale: D = (a_scale · op(A)) (b_scale · op(B)) + beta * D (+ bias), and D (C
// too: one layout) has `dtype`, bf16/fp16/fp32. Hopper runs them only as TN (trans_a, !trans_b),
// with a bias only for 16-bit D, and never with fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM
// = 0: the tensor cores' partial sums are promoted into an fp32 accumulator periodically,
// Transformer Engine's "split accumulator". TE turns fast accumulation on for the forward GEMM;
// ShardLM keeps one accumulation everywhere, close to the CPU's fp32 sums, at a few percent of
// speed).
// The key is everything a plan depends on: dtype (and D's, when wide), the fp8 operand dtypes,
// transposes, m, n, k, lda, ldb, ldd, bias or not, beta == 0 or not, each pointer's alignment up
// to 16 bytes (the heuristic is told A's, B's and D's, so a plan chosen for aligned operands never
// runs on misaligned views; cuBLASLt takes no alignment preference for the bias, whose class only
// separates keys), and whether it was timed.
// The bias and fp8 scale pointers themselves change per call and are set on the cached
// descriptor each time (the scales stay on the device: no host synchronisation).
//
// Algorithm choice, once per key: the heuristic's first kGemmCandidates results. GEMMs with a
// bf16/fp16 D and beta == 0 (16-bit, or fp8 operands into a 16-bit D), while
// CudaBackendState::gemm_autotune() is on, time every candidate on the call's real operands and
// keep the fastest (harmless: with beta == 0 D is only written, and the chosen plan then runs for
// real). Everything else takes the heuristic's first result: fp32 runs are
// compared with the CPU at ~1e-6 and must pick the same algorithm in every process, and beta = 1
// GEMMs accumulate into real gradients, so they cannot run more than once. The first call of a
// timed key waits for the stream (event timing); later calls never synchronize.
//
// Ownership: one cache per rank, owned by CudaBackendState (created on first use) and destroyed
// with it. Thread contract: the state's, one host thread at a time. It grows by one plan per
// distinct key; a training run has a handful of GEMM shapes.
//
//   GemmCall call{DType::kBF16, /*trans_a=*/true, /*trans_b=*/false, OC, N, IC,
//                 w, IC, in, IC, out, OC, /*beta=*/0.0f, bias};
//   run_cached_gemm(cuda_state(ctx), call, "linear", "forward");
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "shardlm/tensor/dtype.h"

namespace shardlm::ops::cuda {

class CudaBackendState;

// Heuristic results considered per key (the timed candidates under autotune).
inline constexpr int kGemmCandidates = 8;

// The fp8 side of a GemmCall. Unset (both dtypes kF32, the default): an ordinary GEMM whose A
// and B have GemmCall::dtype. Set: A and B hold fp8 codes of these dtypes (not both E5M2), and
// a_scale / b_scale point at one fp32 factor each on the device (the operands' scale_inv),
// which cuBLASLt reads when the GEMM runs (CUBLASLT_MATMUL_DESC_A/B_SCALE_POINTER).
struct GemmFp8 {
  DType a = DType::kF32, b = DType::kF32;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  bool enabled() const { return a != DType::kF32 || b != DType::kF32; }
};

// One GEMM's geometry and operands. A is stored (trans_a ? k x m : m x k), B (trans_b ? n x k :
// k x n), column-major with the given leading dimensions; bias is null or bias[m] of dtype.
struct GemmCall {
  DType dtype = DType::kF32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* A = nullptr;
  int64_t lda = 0;
  const void* B = nullptr;
  int64_t ldb = 0;
  void* D = nullptr;
  int64_t ldd = 0;
  float beta = 0.0f;
  const void* bias = nullptr;
  // D in fp32 while A and B are 16-bit (the weight gradient written straight into the fp32
  // main gradient); otherwise D has A's dtype. Not with fp8 (D then has `dtype`, as said there).
  bool wide_output = false;
  // fp8 operands (fp8_gemm): `dtype` is then D's (and the bias's): bf16, fp16 or fp32.
  GemmFp8 fp8{};
};

// Runs call on st's stream through the cached plan for its key, building the plan first when the
// key is new. op and what name the GEMM in errors ("linear", "forward"). Throws
// Error(kInvalidArgument) for a dtype other than fp32/bf16/fp16 (fp8 operand dtypes other than
// e4m3/e5m2, both e5m2, an fp8 GEMM that is not TN, lacks a scale, has a wide output or a bias
// with an fp32 D), Error(kUnsupported) when cuBLASLt has no algorithm for the shape,
// Error(kInternal) on cuBLAS/CUDA failures.
void run_cached_gemm(CudaBackendState& st, const GemmCall& call, const char* op, const char* what);

// The per-rank plans. Opaque outside gemm_plan_cache.cu.
class GemmPlanCache {
 public:
  GemmPlanCache();
  ~GemmPlanCache();
  GemmPlanCache(const GemmPlanCache&) = delete;
  GemmPlanCache& operator=(const GemmPlanCache&) = delete;

  // Number of cached plans (one per distinct key seen).
  size_t size() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm::ops::cuda
