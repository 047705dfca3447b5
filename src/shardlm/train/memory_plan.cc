#include "shardlm/train/memory_plan.h"

#include <cstdio>

#include "shardlm/base/error.h"

namespace shardlm::train {

std::string format_bytes(size_t bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024));
  return buf;
}

std::string MemoryPlan::format() const {
  std::string s = "> memory plan: parameters " + format_bytes(master_params) + ", gradients " +
                  format_bytes(main_grads);
  if (compute_params > 0)
    s += ", compute parameters " + format_bytes(compute_params) + ", compute gradients " +
         format_bytes(compute_grads);
  s += ", optimizer state " + format_bytes(optimizer_state) + ", activations " +
       format_bytes(activations) + ", workspace " + format_bytes(workspace) + " = total " +
       format_bytes(total()) + "\n";
  return s;
}

size_t cuda_workspace_estimate(int64_t micro_batch, int64_t seq_length, int64_t heads,
                               int64_t groups, int64_t head_dim, size_t compute_dtype_bytes) {
  const size_t fixed = size_t{64} << 20;
  const size_t rows = static_cast<size_t>(micro_batch * heads * seq_length);
  size_t attention = rows * (static_cast<size_t>(head_dim) + 1) * sizeof(float);
  if (groups > 0 && heads > groups)
    attention += 2 * rows * static_cast<size_t>(head_dim) * compute_dtype_bytes;
  return fixed + attention;
}

void MemoryPlan::check_fits(const ops::DeviceMemory& available, const std::string& where) const {
  if (available.total_bytes == 0 || total() <= available.free_bytes) return;
  std::string plan = format();  // "> memory plan: ...\n" without the prefix and newline
  plan = plan.substr(2, plan.size() - 3);
  std::string fix;
  if (activations >= master_params + main_grads + optimizer_state)
    fix = "activations dominate: lower --micro-batch-size (raise the number of micro-batches "
          "instead; --global-batch-size stays), or use --recompute-granularity full";
  else
    fix = "parameters, gradients and optimizer state dominate: use --bf16, split the model with "
          "--tensor-model-parallel-size / --pipeline-model-parallel-size, or shard the optimizer "
          "with --use-distributed-optimizer over data-parallel ranks";
  throw Error(ErrorKind::kOutOfMemory,
              "the planned memory does not fit on " + where + ": needs " + format_bytes(total()) +
                  " but only " + format_bytes(available.free_bytes) + " of " +
                  format_bytes(available.total_bytes) + " are free (" + plan +
                  "); " + fix);
}

}  // namespace shardlm::train
