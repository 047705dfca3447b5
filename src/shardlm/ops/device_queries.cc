#include "shardlm/ops/device_queries.h"

#include <fstream>
#include <string>

#include "shardlm/base/error.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/ops/cuda/cuda_context.h"
#endif

namespace shardlm::ops {

namespace {

// MemTotal / MemAvailable from /proc/meminfo (kB); zeros where the file is unreadable.
DeviceMemory host_memory() {
  DeviceMemory mem;
  std::ifstream in("/proc/meminfo");
  std::string key;
  size_t value_kb = 0;
  std::string unit;
  while (in >> key >> value_kb >> unit) {
    if (key == "MemTotal:") mem.total_bytes = value_kb * 1024;
    if (key == "MemAvailable:") mem.free_bytes = value_kb * 1024;
  }
  return mem;
}

}  // namespace

void synchronize(DeviceContext& ctx) {
#ifdef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) cuda::synchronize(ctx);
#else
  (void)ctx;
#endif
}

DeviceMemory device_memory(DeviceContext& ctx) {
#ifdef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) {
    const cuda::MemoryInfo info = cuda::memory_info(ctx);
    return {info.free_bytes, info.total_bytes};
  }
#endif
  if (ctx.device().is_cuda())
    throw Error(ErrorKind::kUnsupported, "device_memory: this build has no CUDA backend");
  return host_memory();
}

bool gemm_autotune(DeviceContext& ctx) {
#ifdef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) return cuda::cuda_state(ctx).gemm_autotune();
#else
  (void)ctx;
#endif
  return false;
}

void set_gemm_autotune(DeviceContext& ctx, bool on) {
#ifdef SHARDLM_WITH_CUDA
  if (ctx.device().is_cuda()) cuda::cuda_state(ctx).set_gemm_autotune(on);
#else
  (void)ctx;
  (void)on;
#endif
}

}  // namespace shardlm::ops
