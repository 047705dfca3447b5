// MemoryPlan: the bytes one rank will allocate, by category, computed from the config before
// anything is allocated (DESIGN §8.4: memory is planned, then allocated once). The trainer logs
// it at startup, checks it against the device's free memory first — an over-size run fails
// with needed vs available bytes and what to change, not a raw CUDA out-of-memory error — and
// reports the measured peak at the end.
//
//   MemoryPlan plan = ...;                    // filled by the trainer from registry + model
//   log << plan.format();
//   plan.check_fits(ops::device_memory(ctx), cfg_summary);   // throws Error(kOutOfMemory)
#pragma once

#include <cstddef>
#include <string>

#include "shardlm/ops/device_queries.h"

namespace shardlm::train {

struct MemoryPlan {
  size_t master_params = 0;    // fp32 (or fp64) parameters
  size_t main_grads = 0;       // gradients in the master dtype
  size_t compute_params = 0;   // bf16/fp16 compute copy (mixed precision only)
  size_t compute_grads = 0;    // its gradients
  size_t optimizer_state = 0;  // Adam moments
  size_t activations = 0;      // one micro-batch's saved activations + backward scratch
  size_t workspace = 0;        // library workspaces and per-op scratch (estimate)

  size_t total() const {
    return master_params + main_grads + compute_params + compute_grads + optimizer_state +
           activations + workspace;
  }
  // "> memory plan: ... = total X GiB" (one line, categories in MiB).
  std::string format() const;
  // Throws Error(kOutOfMemory) when total() exceeds the free memory, naming needed and
  // available bytes, the largest categories and the flags that shrink them. `where` names the
  // device ("cuda:0").
  void check_fits(const ops::DeviceMemory& available, const std::string& where) const;
};

std::string format_bytes(size_t bytes);  // "1.23 GiB" / "456.7 MiB"

// Workspace of a CUDA rank: cuBLASLt's workspace and small buffers (a fixed 64 MiB) plus the
// op scratch the largest op grows the context's scratch to (CudaBackendState::scratch, kept for
// the run). That op is attention's backward: through cuDNN, an fp32 dQ accumulator and fp32
// softmax sums per query head, and for grouped-query attention the gathered queries and dQ
// (2 x [B, T, heads, HS] in the compute dtype); ShardLM's own kernels need less (2 fp32 per
// query row). heads = this rank's query heads, groups = its query groups. cuDNN's own plan
// workspace is not known before its plan is built and is not counted (0 for the engines
// measured so far). The embedding backward's sort (~16 B per token row plus cub's storage) is
// far smaller.
size_t cuda_workspace_estimate(int64_t micro_batch, int64_t seq_length, int64_t heads,
                               int64_t groups, int64_t head_dim, size_t compute_dtype_bytes);

}  // namespace shardlm::train
