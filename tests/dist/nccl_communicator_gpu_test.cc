// NcclCommunicator with one rank on GPU 0 (the multi-GPU checks are tests/dist/nccl_smoke and
// the launch script): bootstrap through the TcpStore, a collective and a split, and the end of
// life — a clean end finalizes and destroys within the deadline, an end while an exception
// unwinds aborts — without hanging.
#include "shardlm/dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <vector>

#include "shardlm/dist/tcp_store.h"
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::unique_ptr<NcclCommunicator> one_rank_world(DeviceContext& ctx, TcpStore& store,
                                                 const std::string& name) {
  return NcclCommunicator::create_world(ctx, store, 0, 1, {.timeout = 30s, .name = name});
}

void sum_on_one_rank(Communicator& comm, DeviceContext& ctx) {
  const std::vector<float> host = {1.5f, -2.0f, 3.25f, 7.0f, -0.5f};
  OwnedTensor x = OwnedTensor::empty(DType::kF32, {5}, ctx.device());
  ASSERT_EQ(cudaMemcpy(x.view().raw(), host.data(), 5 * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  comm.all_reduce(x.view());
  ops::cuda::synchronize(ctx);
  std::vector<float> got(5);
  ASSERT_EQ(cudaMemcpy(got.data(), x.view().raw(), 5 * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(got, host);  // the sum over one rank
}

TEST(NcclCommunicatorOneGpu, CollectiveSplitAndCleanEnd) {
  DeviceContext ctx(Device::cuda(0));
  ops::cuda::init_cuda_backend(ctx);
  TcpStore store({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  const auto t0 = Clock::now();
  {
    std::unique_ptr<NcclCommunicator> world = one_rank_world(ctx, store, "clean");
    ASSERT_EQ(world->size(), 1);
    sum_on_one_rank(*world, ctx);
    std::unique_ptr<Communicator> group = world->split(0, 0, "tp");
    ASSERT_NE(group, nullptr);
    sum_on_one_rank(*group, ctx);
    world->barrier();
  }  // group, then world: finalize + destroy
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 25.0);
}

TEST(NcclCommunicatorOneGpu, EndWhileUnwindingAborts) {
  DeviceContext ctx(Device::cuda(0));
  ops::cuda::init_cuda_backend(ctx);
  TcpStore store({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  const auto t0 = Clock::now();
  try {
    std::unique_ptr<NcclCommunicator> world = one_rank_world(ctx, store, "unwind");
    sum_on_one_rank(*world, ctx);
    throw std::runtime_error("failing rank");  // ~NcclCommunicator runs while this unwinds
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "failing rank");
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 25.0);
  // The device still works for the next communicator.
  std::unique_ptr<NcclCommunicator> again = one_rank_world(ctx, store, "after");
  sum_on_one_rank(*again, ctx);
}

}  // namespace
}  // namespace shardlm::dist
