// gemm_plan_cache.cu — see gemm_plan_cache.h: plan building (descriptor, layouts, heuristic
// with the operands' real alignment; the fp8 attributes), the candidate timing of autotune, and
// the cached launch.
#include "shardlm/ops/cuda/gemm_plan_cache.h"

#include <cublasLt.h>

#include <algorithm>
#include <compare>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "shardlm/ops/cuda/common.cuh"
#include "shardlm/ops/cuda/cublaslt_handles.h"

namespace shardlm::ops::cuda {
namespace {

constexpr int kTimedRuns = 3;  // per candidate, after one warm-up run

// Largest power of two dividing the address, capped at 16 bytes (what vectorized and TMA loads
// need). The heuristic is given this as the minimum alignment, so the plan holds for every
// pointer of the same class.
uint32_t alignment_class(const void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uint32_t bytes = 16;
  while (address % bytes != 0) bytes /= 2;
  return bytes;
}

struct GemmKey {
  DType dtype;
  DType fp8_a, fp8_b;  // kF32 both: not an fp8 GEMM
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldd;
  bool bias, beta_zero, wide_output;
  uint32_t align_a, align_b, align_d, align_bias;
  bool timed;  // the algorithm was (or will be) picked by timing, not heuristic result 0
  auto operator<=>(const GemmKey&) const = default;
};

bool is_16bit(DType dtype) { return dtype == DType::kBF16 || dtype == DType::kF16; }

GemmKey gemm_key(const GemmCall& c, bool autotune) {
  const bool beta_zero = c.beta == 0.0f;
  // For fp8 GEMMs c.dtype is D's, so "timed" keeps the 16-bit rule: a bf16/fp16 D, beta == 0.
  return GemmKey{c.dtype, c.fp8.a, c.fp8.b, c.trans_a, c.trans_b, c.m, c.n, c.k, c.lda, c.ldb,
                 c.ldd, c.bias != nullptr, beta_zero, c.wide_output, alignment_class(c.A),
                 alignment_class(c.B), alignment_class(c.D), alignment_class(c.bias),
                 autotune && beta_zero && is_16bit(c.dtype)};
}

// RAII owner of a CUDA event (autotune timing).
struct Event {
  cudaEvent_t event = nullptr;
  ~Event() { if (event) cudaEventDestroy(event); }
};

// One key's plan. The bias and fp8 scale pointers on the descriptor are the last call's: every
// call that has them sets its own before launching.
struct GemmPlan {
  LtMatmulDesc op;
  LtLayout a, b, d;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct GemmPlanCache::Impl {
  std::map<GemmKey, std::unique_ptr<GemmPlan>> plans;
};

GemmPlanCache::GemmPlanCache() : impl_(std::make_unique<Impl>()) {}
GemmPlanCache::~GemmPlanCache() = default;
size_t GemmPlanCache::size() const { return impl_->plans.size(); }

namespace {

// The pointers that change from call to call: the bias (when the key has one) and the fp8
// operands' scale factors.
void set_call_pointers(GemmPlan& plan, const GemmCall& c) {
  if (c.bias != nullptr)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                &c.bias, sizeof(c.bias)));
  if (c.fp8.enabled()) {
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op.h, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                &c.fp8.a_scale, sizeof(c.fp8.a_scale)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op.h, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                &c.fp8.b_scale, sizeof(c.fp8.b_scale)));
  }
}

// What cuBLASLt's fp8 GEMMs require on Hopper (cublasLtMatmul's fp8 table), checked before a
// plan is looked up so a wrong call fails with a sentence rather than a cuBLAS status.
void check_fp8_call(const GemmCall& c, const char* op) {
  const auto fail = [&](const std::string& why) {
    throw Error(ErrorKind::kInvalidArgument, std::string(op) + " on CUDA: fp8 GEMM " + why);
  };
  lt_fp8_data_type(c.fp8.a, op);
  lt_fp8_data_type(c.fp8.b, op);
  if (c.fp8.a == DType::kF8E5M2 && c.fp8.b == DType::kF8E5M2)
    fail("with both operands fp8_e5m2 (no such GEMM exists; one must be fp8_e4m3)");
  if (!c.trans_a || c.trans_b)
    fail("must be TN (A transposed, B not): the only fp8 form Hopper runs");
  if (c.fp8.a_scale == nullptr || c.fp8.b_scale == nullptr)
    fail("needs both operands' scale factors (device pointers)");
  // Measured on H100 (cuBLASLt 13.1): a scale at a 4-byte offset made every heuristic candidate
  // fail at launch with CUBLAS_STATUS_NOT_SUPPORTED; 16-byte aligned ones run.
  if (!aligned16(c.fp8.a_scale) || !aligned16(c.fp8.b_scale))
    fail("needs 16-byte aligned scale-factor pointers (cuBLASLt refuses others at launch): keep "
         "each scale in its own 16-byte slot");
  if (c.wide_output) fail("takes its output dtype from `dtype`, not wide_output");
  if (c.bias != nullptr && c.dtype == DType::kF32)
    fail("with an fp32 output takes no bias here (cuBLASLt wants a bf16 bias for fp32 D)");
}

// Unchecked: autotune skips candidates cuBLASLt refuses; the real launch checks the status.
cublasStatus_t launch(const CudaBackendState& st, const GemmPlan& plan, const GemmCall& c,
                      const cublasLtMatmulAlgo_t& algo) {
  const float alpha = 1.0f;
  return cublasLtMatmul(st.cublaslt(), plan.op.h, &alpha, c.A, plan.a.h, c.B,
                        plan.b.h, &c.beta, c.D, plan.d.h, c.D, plan.d.h, &algo,
                        st.cublas_workspace(), CudaBackendState::kCublasWorkspaceBytes,
                        st.stream());
}

// Descriptor (transposes, BIAS epilogue, fp8 attributes, the call's pointers) and layouts; no
// algorithm yet. `type` is A's and B's, and D's unless wide (fp8: D's, A and B take fp8 types).
std::unique_ptr<GemmPlan> describe(const GemmCall& c, cudaDataType_t type, const char* op) {
  auto plan = std::make_unique<GemmPlan>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->op.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (c.bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op.h, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                &epilogue, sizeof(epilogue)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                &type, sizeof(type)));
  }
  const bool fp8 = c.fp8.enabled();
  if (fp8) {
    const int8_t fast_accum = 0;  // see the header: one accumulation everywhere
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op.h, CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                                                &fast_accum, sizeof(fast_accum)));
  }
  set_call_pointers(*plan, c);
  const cudaDataType_t a_type = fp8 ? lt_fp8_data_type(c.fp8.a, op) : type;
  const cudaDataType_t b_type = fp8 ? lt_fp8_data_type(c.fp8.b, op) : type;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a.h, a_type, c.trans_a ? c.k : c.m,
                                          c.trans_a ? c.m : c.k, c.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b.h, b_type, c.trans_b ? c.n : c.k,
                                          c.trans_b ? c.k : c.n, c.ldb));
  const cudaDataType_t d_type = c.wide_output ? CUDA_R_32F : type;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d.h, d_type, c.m, c.n, c.ldd));
  return plan;
}

// The heuristic's usable results, best first. A fixed array: nvcc's front end crashes on a
// std::vector of cuBLASLt's unnamed result structs.
struct Candidates {
  cublasLtMatmulHeuristicResult_t results[kGemmCandidates];
  int count = 0;
};

// Asks the heuristic for up to max_results algorithms for the key's workspace and alignments.
Candidates candidates(const CudaBackendState& st, const GemmPlan& plan, const GemmKey& key,
                      int max_results) {
  LtPreference pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.h));
  const uint64_t workspace = CudaBackendState::kCublasWorkspaceBytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  // Without these the heuristic assumes 256-byte aligned buffers.
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attribute, bytes] : alignments)
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, attribute, &bytes, sizeof(bytes)));
  cublasLtMatmulHeuristicResult_t results[kGemmCandidates] = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      st.cublaslt(), plan.op.h, plan.a.h, plan.b.h, plan.d.h, plan.d.h,
      pref.h, std::min(max_results, kGemmCandidates), results, &found);
  Candidates usable{};
  // NOT_SUPPORTED is cuBLASLt's "nothing for this case": the caller reports it like found == 0.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return usable;
  CUBLAS_CHECK(status);
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) usable.results[usable.count++] = results[i];
  return usable;
}

// Index of the fastest candidate on the call's operands: one warm-up, then kTimedRuns launches
// between two events on the context's stream. Candidates that cuBLASLt refuses at launch are
// skipped; 0 when none ran (the real launch then reports the error).
int fastest_candidate(const CudaBackendState& st, const GemmPlan& plan, const GemmCall& c,
                      const Candidates& cands) {
  Event start, stop;
  CUDA_CHECK(cudaEventCreate(&start.event));
  CUDA_CHECK(cudaEventCreate(&stop.event));
  int best = 0;
  float best_ms = std::numeric_limits<float>::infinity();
  for (int i = 0; i < cands.count; ++i) {
    const cublasLtMatmulAlgo_t& algo = cands.results[i].algo;
    bool ok = launch(st, plan, c, algo) == CUBLAS_STATUS_SUCCESS;
    if (ok) {
      CUDA_CHECK(cudaEventRecord(start.event, st.stream()));
      for (int r = 0; r < kTimedRuns && ok; ++r)
        ok = launch(st, plan, c, algo) == CUBLAS_STATUS_SUCCESS;
      CUDA_CHECK(cudaEventRecord(stop.event, st.stream()));
      CUDA_CHECK(cudaEventSynchronize(stop.event));
    }
    if (!ok) {
      // A refused launch may leave a (non-sticky) launch error behind; it is not the op's.
      (void)cudaGetLastError();
      continue;
    }
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start.event, stop.event));
    if (ms < best_ms) {
      best_ms = ms;
      best = i;
    }
  }
  return best;
}

std::unique_ptr<GemmPlan> build_plan(const CudaBackendState& st, const GemmCall& c,
                                     const GemmKey& key, const char* op, const char* what) {
  std::unique_ptr<GemmPlan> plan = describe(c, lt_data_type(c.dtype, op), op);
  const Candidates cands = candidates(st, *plan, key, key.timed ? kGemmCandidates : 1);
  if (cands.count == 0)
    throw Error(ErrorKind::kUnsupported,
                std::string(op) + " on CUDA: cuBLASLt has no algorithm for the " + what +
                    " GEMM m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) +
                    " k=" + std::to_string(c.k) + " in " +
                    (c.fp8.enabled() ? std::string(dtype_name(c.fp8.a)) + " x " +
                                           dtype_name(c.fp8.b) + " into " + dtype_name(c.dtype)
                                     : std::string(dtype_name(c.dtype))) +
                    (c.wide_output ? " with an fp32 output" : ""));
  plan->algo = cands.results[cands.count > 1 ? fastest_candidate(st, *plan, c, cands) : 0].algo;
  return plan;
}

}  // namespace

void run_cached_gemm(CudaBackendState& st, const GemmCall& call, const char* op,
                     const char* what) {
  if (call.fp8.enabled()) check_fp8_call(call, op);
  auto& plans = st.gemm_plans().impl().plans;
  const GemmKey key = gemm_key(call, st.gemm_autotune());
  auto it = plans.find(key);
  if (it == plans.end()) {
    // Inserted only once built: a throw while building leaves no half-made plan behind.
    std::unique_ptr<GemmPlan> plan = build_plan(st, call, key, op, what);
    it = plans.emplace(key, std::move(plan)).first;
  } else {
    set_call_pointers(*it->second, call);
  }
  CUBLAS_CHECK(launch(st, *it->second, call, it->second->algo));
}

}  // namespace shardlm::ops::cuda
