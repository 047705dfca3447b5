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

}  // namespace shardlm::ops
