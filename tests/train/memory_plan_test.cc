// The memory plan's CUDA workspace estimate: the fixed 64 MiB plus attention backward's scratch
// (cuDNN's fp32 dQ accumulator and softmax sums; gathered queries and dQ for grouped-query
// attention), for the shapes of bench/RESULTS.md where the measured peak is known.
#include <gtest/gtest.h>

#include "shardlm/base/error.h"
#include "shardlm/train/memory_plan.h"

namespace shardlm::train {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(MemoryPlan, CudaWorkspaceCountsAttentionBackwardScratch) {
  // GPT 1.3B, 8 x 2048, 16 heads of 128 (MHA): 8*16*2048 query rows x (128 + 1) fp32.
  const size_t rows = 8 * 16 * 2048;
  EXPECT_EQ(cuda_workspace_estimate(8, 2048, 16, 16, 128, 2), 64 * kMiB + rows * 129 * 4);
  // Llama-style 1B, 32 heads of 64 in 8 groups: plus gathered Q and dQ in bf16.
  const size_t rows_l = 8 * 32 * 2048;
  EXPECT_EQ(cuda_workspace_estimate(8, 2048, 32, 8, 64, 2),
            64 * kMiB + rows_l * 65 * 4 + 2 * rows_l * 64 * 2);
  // Halving the heads (tensor parallelism 2) halves the attention part.
  EXPECT_EQ(cuda_workspace_estimate(8, 2048, 8, 8, 128, 2) - 64 * kMiB,
            (cuda_workspace_estimate(8, 2048, 16, 16, 128, 2) - 64 * kMiB) / 2);
}

TEST(MemoryPlan, WorkspaceIsPartOfTheTotalAndOfTheFitCheck) {
  MemoryPlan plan;
  plan.master_params = 100 * kMiB;
  plan.workspace = cuda_workspace_estimate(8, 2048, 16, 16, 128, 2);
  EXPECT_EQ(plan.total(), 100 * kMiB + plan.workspace);
  EXPECT_NE(plan.format().find("workspace 193.0 MiB"), std::string::npos) << plan.format();
  ops::DeviceMemory small;
  small.total_bytes = 1024 * kMiB;
  small.free_bytes = 200 * kMiB;  // fits the parameters, not the workspace as well
  EXPECT_THROW(plan.check_fits(small, "cuda:0"), Error);
}

}  // namespace
}  // namespace shardlm::train
