// `shardlm launch` on a GPU machine with ONE GPU made visible to two ranks: NCCL needs a GPU per
// rank, so --device cuda fails on both ranks at once with the shared GPU named and the fixes,
// --device auto runs both ranks on the CPU and says why, and --distributed-backend gloo lets
// them share the GPU (dist/gpu_binding.h).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "tests/testing/run_command.h"

namespace {

using Result = shardlm::testing::CommandResult;  // output: stdout + stderr

// The first GPU this test may use (the first entry of an inherited CUDA_VISIBLE_DEVICES, which
// may be an index or a UUID), made the only one visible.
std::string one_gpu_visible() {
  const char* inherited = std::getenv("CUDA_VISIBLE_DEVICES");
  std::string first = inherited != nullptr && *inherited != '\0' ? inherited : "0";
  first = first.substr(0, first.find(','));
  return "CUDA_VISIBLE_DEVICES=" + first;
}

Result run_on_gpu0(const std::string& args) {
  return shardlm::testing::run_command(one_gpu_visible() + " timeout -k 5 120 " +
                                       std::string(SHARDLM_BINARY_PATH) + " " + args + " 2>&1");
}

int count(const std::string& s, const std::string& needle) {
  int n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

const std::string kTrain =
    "train --mock-data --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
    "--vocab-size 256 --micro-batch-size 2 --global-batch-size 8 --lr 1e-3 --train-iters 4 "
    "--log-interval 1 --eval-interval 4 --eval-iters 1 --seed 11 ";

TEST(SharedGpuLaunch, CudaFailsOnEveryRankNamingTheSharedGpu) {
  const Result r = run_on_gpu0("launch --nproc-per-node 2 --master-port 0 --device cuda -- " +
                               kTrain);
  EXPECT_NE(r.exit_code, 0) << r.output;
  // Both ranks fail before any communicator exists (no rendezvous timeout).
  EXPECT_EQ(count(r.output, "2 rank(s) would share a GPU"), 2) << r.output;
  EXPECT_NE(r.output.find("GPU-"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1 (local rank 1 on "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--distributed-backend gloo"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 60) << r.output;
}

TEST(SharedGpuLaunch, AutoRunsBothRanksOnTheCpuAndSaysWhy) {
  const Result r = run_on_gpu0("launch --nproc-per-node 2 --master-port 0 -- " + kTrain);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("device: --device auto: 2 rank(s) would share a GPU"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("communicator socket (CPU ranks"), std::string::npos) << r.output;
}

TEST(SharedGpuLaunch, GlooSharesTheGpu) {
  const Result r = run_on_gpu0("launch --nproc-per-node 2 --master-port 0 --device cuda -- " +
                               kTrain + "--distributed-backend gloo");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("staged through host memory (GPU 0)"), std::string::npos) << r.output;
}

}  // namespace
