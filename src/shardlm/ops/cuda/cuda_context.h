// cuda_context.h — the CUDA backend's per-rank state, hung off DeviceContext::backend():
// the compute stream every op runs on, a cuBLASLt handle with its workspace and GEMM plans, and
// small device/pinned buffers for ops that return a host value or need per-call scratch.
//
// Ownership: created by init_cuda_backend(ctx) and owned by ctx (one per rank, no globals).
// Thread contract: like the DeviceContext, used by one host thread at a time.
//
//   DeviceContext ctx(Device::cuda(local_rank));
//   ops::cuda::init_cuda_backend(ctx);          // sets the device, creates stream + handles
//   cudaStream_t s = ops::cuda::cuda_state(ctx).stream();
//   ops::cuda::synchronize(ctx);                // wait for all queued ops (throws on error)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "shardlm/ops/cuda/cudnn_attention.h"
#include "shardlm/ops/cuda/gemm_plan_cache.h"
#include "shardlm/tensor/device_context.h"

// Opaque handles, so host-only code can include this header without the CUDA headers.
struct CUstream_st;
struct cublasLtContext;

namespace shardlm::ops::cuda {

class CudaBackendState final : public BackendState {
 public:
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // Hopper recommendation
  static constexpr int kMaxReductionBlocks = 1024;

  explicit CudaBackendState(int device_index);
  ~CudaBackendState() override;
  CudaBackendState(const CudaBackendState&) = delete;
  CudaBackendState& operator=(const CudaBackendState&) = delete;

  int device_index() const { return device_index_; }
  CUstream_st* stream() const { return stream_; }
  cublasLtContext* cublaslt() const { return cublaslt_; }
  void* cublas_workspace() const { return cublas_workspace_; }
  int multiprocessor_count() const { return multiprocessor_count_; }
  size_t max_shared_memory_per_block() const { return max_smem_per_block_; }

  // Per-block partial results of reductions: kMaxReductionBlocks doubles (device).
  double* reduction_partials() const { return reduction_partials_; }
  // A few words the device writes and the host reads back (device + pinned host mirror).
  uint64_t* device_flags() const { return device_flags_; }
  uint64_t* host_flags() const { return host_flags_; }

  // Stream-ordered scratch of at least `bytes`, valid until the next scratch() call. Grows
  // (cudaMallocAsync on the stream) the first time a larger size is asked for, so a training
  // loop reaches its steady size in the first step and never allocates afterwards.
  void* scratch(size_t bytes);

  // Which attention kernels run (cudnn_attention.h); kAuto unless a test or bench says.
  AttentionKernels attention_kernels() const { return attention_kernels_; }
  void set_attention_kernels(AttentionKernels k) { attention_kernels_ = k; }
  // cuDNN's handle and attention plans, created on first use.
  CudnnAttentionCache& cudnn_attention();

  // Whether bf16/fp16 GEMMs with beta == 0 time the heuristic's candidates on the first call of
  // a shape and keep the fastest (gemm_plan_cache.h); on by default. Off: the heuristic's first
  // choice, the same algorithm in every run. Plans made under either setting are kept apart.
  bool gemm_autotune() const { return gemm_autotune_; }
  void set_gemm_autotune(bool on) { gemm_autotune_ = on; }
  // cuBLASLt GEMM plans per shape, created on first use.
  GemmPlanCache& gemm_plans();

 private:
  void release() noexcept;

  int device_index_ = 0;
  CUstream_st* stream_ = nullptr;
  cublasLtContext* cublaslt_ = nullptr;
  void* cublas_workspace_ = nullptr;
  int multiprocessor_count_ = 0;
  size_t max_smem_per_block_ = 0;
  double* reduction_partials_ = nullptr;
  uint64_t* device_flags_ = nullptr;
  uint64_t* host_flags_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  AttentionKernels attention_kernels_ = AttentionKernels::kAuto;
  std::unique_ptr<CudnnAttentionCache> cudnn_attention_;
  bool gemm_autotune_ = true;
  std::unique_ptr<GemmPlanCache> gemm_plans_;
};

// Creates the CUDA state for ctx.device() (must be a CUDA device) and attaches it to ctx.
// Throws Error(kUnsupported) in builds without CUDA devices, Error(kInvalidArgument) for a
// device index that does not exist.
void init_cuda_backend(DeviceContext& ctx);

// The state attached to ctx; throws Error(kInvalidArgument) when init_cuda_backend was not called.
CudaBackendState& cuda_state(const DeviceContext& ctx);

// Blocks until every op queued on ctx's stream has finished; throws on asynchronous errors.
void synchronize(const DeviceContext& ctx);

// cudaMemGetInfo on ctx's device.
struct MemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};
MemoryInfo memory_info(const DeviceContext& ctx);

}  // namespace shardlm::ops::cuda
