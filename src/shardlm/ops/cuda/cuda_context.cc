// cuda_context.cc — creation and teardown of the CUDA backend state (see cuda_context.h).
#include "shardlm/ops/cuda/cuda_context.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm::ops::cuda {
namespace {

[[noreturn]] void fail(cudaError_t err, const char* expr, int line) {
  const ErrorKind kind =
      err == cudaErrorMemoryAllocation ? ErrorKind::kOutOfMemory : ErrorKind::kInternal;
  throw Error(kind, std::string(__FILE__) + ":" + std::to_string(line) + ": " + expr +
                        " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                        ")");
}
#define CONTEXT_CUDA_CHECK(expr)                                 \
  do {                                                           \
    const cudaError_t context_err_ = (expr);                     \
    if (context_err_ != cudaSuccess) fail(context_err_, #expr, __LINE__); \
  } while (0)

}  // namespace

CudaBackendState::CudaBackendState(int device_index) : device_index_(device_index) {
  int count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&count);
  if (count_err != cudaSuccess || count == 0)
    throw Error(ErrorKind::kUnsupported,
                std::string("CUDA backend: no CUDA device is visible (") +
                    cudaGetErrorString(count_err) +
                    "); run on a GPU machine or use --device cpu");
  if (device_index < 0 || device_index >= count)
    throw Error(ErrorKind::kInvalidArgument,
                "CUDA backend: device cuda:" + std::to_string(device_index) + " does not exist (" +
                    std::to_string(count) + " visible)");
  CONTEXT_CUDA_CHECK(cudaSetDevice(device_index));
  cudaDeviceProp prop{};
  CONTEXT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
  multiprocessor_count_ = prop.multiProcessorCount;
  max_smem_per_block_ = prop.sharedMemPerBlockOptin;
  // release() frees whatever was created if a later step throws.
  try {
    cudaStream_t stream = nullptr;
    CONTEXT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    stream_ = stream;
    cublasLtHandle_t handle = nullptr;
    const cublasStatus_t st = cublasLtCreate(&handle);
    if (st != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorKind::kInternal, std::string("cublasLtCreate failed: ") +
                                            cublasLtGetStatusString(st));
    cublaslt_ = handle;
    CONTEXT_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
    CONTEXT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&reduction_partials_),
                                  kMaxReductionBlocks * sizeof(double)));
    CONTEXT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_flags_), 8 * sizeof(uint64_t)));
    CONTEXT_CUDA_CHECK(
        cudaMallocHost(reinterpret_cast<void**>(&host_flags_), 8 * sizeof(uint64_t)));
  } catch (...) {
    release();
    throw;
  }
}

CudaBackendState::~CudaBackendState() { release(); }

void CudaBackendState::release() noexcept {
  // Must not throw: errors here are ignored (the process is usually ending).
  cudaSetDevice(device_index_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  cudnn_attention_.reset();
  gemm_plans_.reset();  // descriptors only; before the handle they were used with
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (host_flags_ != nullptr) cudaFreeHost(host_flags_);
  if (device_flags_ != nullptr) cudaFree(device_flags_);
  if (reduction_partials_ != nullptr) cudaFree(reduction_partials_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (cublaslt_ != nullptr) cublasLtDestroy(cublaslt_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  scratch_ = nullptr;
  host_flags_ = nullptr;
  device_flags_ = nullptr;
  reduction_partials_ = nullptr;
  cublas_workspace_ = nullptr;
  cublaslt_ = nullptr;
  stream_ = nullptr;
}

void* CudaBackendState::scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  // Round up to 1 MiB steps so slowly growing requests do not reallocate every call.
  const size_t rounded = ((bytes + (size_t{1} << 20) - 1) >> 20) << 20;
  if (scratch_ != nullptr) CONTEXT_CUDA_CHECK(cudaFreeAsync(scratch_, stream_));
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  const cudaError_t err = cudaMallocAsync(&scratch_, rounded, stream_);
  if (err != cudaSuccess)
    throw Error(ErrorKind::kOutOfMemory,
                "CUDA backend: could not allocate " + std::to_string(rounded) +
                    " bytes of op scratch on cuda:" + std::to_string(device_index_) + " (" +
                    cudaGetErrorString(err) + "); reduce the micro-batch size");
  scratch_bytes_ = rounded;
  return scratch_;
}

CudnnAttentionCache& CudaBackendState::cudnn_attention() {
  if (!cudnn_attention_) cudnn_attention_ = std::make_unique<CudnnAttentionCache>();
  return *cudnn_attention_;
}

GemmPlanCache& CudaBackendState::gemm_plans() {
  if (!gemm_plans_) gemm_plans_ = std::make_unique<GemmPlanCache>();
  return *gemm_plans_;
}

void init_cuda_backend(DeviceContext& ctx) {
  if (!ctx.device().is_cuda())
    throw Error(ErrorKind::kInvalidArgument,
                "init_cuda_backend: context device is " + ctx.device().to_string() +
                    ", not a CUDA device");
  ctx.set_backend(std::make_unique<CudaBackendState>(ctx.device().index));
}

CudaBackendState& cuda_state(const DeviceContext& ctx) {
  auto* state = dynamic_cast<CudaBackendState*>(ctx.backend());
  if (state == nullptr)
    throw Error(ErrorKind::kInvalidArgument,
                "CUDA op called with a context that has no CUDA backend state (device " +
                    ctx.device().to_string() + "); call ops::cuda::init_cuda_backend(ctx) first");
  return *state;
}

void synchronize(const DeviceContext& ctx) {
  CONTEXT_CUDA_CHECK(cudaStreamSynchronize(cuda_state(ctx).stream()));
}

MemoryInfo memory_info(const DeviceContext& ctx) {
  CONTEXT_CUDA_CHECK(cudaSetDevice(cuda_state(ctx).device_index()));
  MemoryInfo info;
  CONTEXT_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  return info;
}

}  // namespace shardlm::ops::cuda
