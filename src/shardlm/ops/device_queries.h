// Device-level queries every layer above ops/ may need without knowing the backend:
// waiting for queued work (timing, benchmarks) and the device's free / total memory (the memory
// plan's "needed vs available" check and the measured peak).
//
//   ops::synchronize(ctx);                          // CPU: no-op
//   ops::DeviceMemory mem = ops::device_memory(ctx);  // CUDA: cudaMemGetInfo; CPU: /proc/meminfo
#pragma once

#include <cstddef>

#include "shardlm/tensor/device_context.h"

namespace shardlm::ops {

// Blocks until every op queued on ctx's device has finished (throws on asynchronous errors).
void synchronize(DeviceContext& ctx);

struct DeviceMemory {
  size_t free_bytes = 0;   // CUDA: free device memory; CPU: MemAvailable
  size_t total_bytes = 0;  // CUDA: device memory; CPU: MemTotal
  size_t used_bytes() const { return total_bytes - free_bytes; }
};
DeviceMemory device_memory(DeviceContext& ctx);

// GEMM algorithm choice on ctx (CUDA; the CPU has one GEMM): while autotune is on (the default)
// a bf16/fp16 GEMM shape seen for the first time times the heuristic's top candidates and keeps
// the fastest (ops/cuda/gemm_plan_cache.h); off, a new shape takes the heuristic's first choice.
// Layers whose GEMM shapes change every step (MoE experts: the rows per expert follow the
// routing) turn it off around those GEMMs through GemmAutotuneOff, so a new shape costs one
// heuristic query instead of timed runs with a stream synchronisation.
bool gemm_autotune(DeviceContext& ctx);
void set_gemm_autotune(DeviceContext& ctx, bool on);

// Autotune off for the guard's lifetime, then back to what it was.
class GemmAutotuneOff {
 public:
  explicit GemmAutotuneOff(DeviceContext& ctx) : ctx_(ctx), was_(gemm_autotune(ctx)) {
    set_gemm_autotune(ctx, false);
  }
  ~GemmAutotuneOff() { set_gemm_autotune(ctx_, was_); }
  GemmAutotuneOff(const GemmAutotuneOff&) = delete;
  GemmAutotuneOff& operator=(const GemmAutotuneOff&) = delete;

 private:
  DeviceContext& ctx_;
  bool was_;
};

}  // namespace shardlm::ops
