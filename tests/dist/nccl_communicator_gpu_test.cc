// NcclCommunicator with one rank on GPU 0 (the multi-GPU checks are tests/dist/nccl_smoke and
// the launch script): bootstrap through the TcpStore, a collective and a split, and the end of
// life — a clean end finalizes and destroys within the deadline, an end while an exception
// unwinds aborts — without hanging; close() reports which of the two happened.
#include "shardlm/dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "shardlm/base/error.h"
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

using Ending = NcclCommunicator::Ending;

TEST(NcclCommunicatorOneGpu, CollectiveSplitAndCleanEnd) {
  DeviceContext ctx(Device::cuda(0));
  ops::cuda::init_cuda_backend(ctx);
  TcpStore store({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  const auto t0 = Clock::now();
  std::unique_ptr<NcclCommunicator> world = one_rank_world(ctx, store, "clean");
  ASSERT_EQ(world->size(), 1);
  sum_on_one_rank(*world, ctx);
  std::unique_ptr<Communicator> group = world->split(0, 0, "tp");
  ASSERT_NE(group, nullptr);
  sum_on_one_rank(*group, ctx);
  world->barrier();
  auto* nccl_group = dynamic_cast<NcclCommunicator*>(group.get());
  ASSERT_NE(nccl_group, nullptr);
  // A handle still unwaited at the close: close drains the stream, so waiting later succeeds.
  OwnedTensor y = OwnedTensor::zeros(DType::kF32, {5}, ctx.device());
  CommHandle late = world->all_reduce_async(y.view());
  // The split group, then the world: each finalizes and is destroyed, not aborted.
  EXPECT_EQ(nccl_group->close(), Ending::kFinalized);
  EXPECT_EQ(world->close(), Ending::kFinalized);
  EXPECT_EQ(world->close(), Ending::kFinalized);  // idempotent
  EXPECT_NO_THROW(late.wait());
  // abort() after a clean end changes nothing (and marks no rank dead).
  world->abort("after a clean end");
  EXPECT_EQ(world->close(), Ending::kFinalized);
  EXPECT_FALSE(store.check({"nccl/dead/0"})[0]);  // the key announce_failure sets
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 25.0);
  // A closed communicator refuses work with a message, not a crash.
  OwnedTensor x = OwnedTensor::empty(DType::kF32, {5}, ctx.device());
  try {
    world->all_reduce(x.view());
    ADD_FAILURE() << "all_reduce on a closed communicator did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("closed by this rank"), std::string::npos) << e.what();
  }
}

// Closes the communicator from a destructor, so while an exception unwinds (as a failing rank's
// ~NcclCommunicator does), and keeps how it ended.
struct CloseWhileUnwinding {
  NcclCommunicator* comm;
  Ending* ending;
  ~CloseWhileUnwinding() { *ending = comm->close(); }
};

TEST(NcclCommunicatorOneGpu, EndWhileUnwindingAborts) {
  DeviceContext ctx(Device::cuda(0));
  ops::cuda::init_cuda_backend(ctx);
  TcpStore store({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  const auto t0 = Clock::now();
  Ending ending = Ending::kOpen;
  try {
    std::unique_ptr<NcclCommunicator> world = one_rank_world(ctx, store, "unwind");
    sum_on_one_rank(*world, ctx);
    CloseWhileUnwinding guard{world.get(), &ending};
    throw std::runtime_error("failing rank");  // guard, then ~NcclCommunicator, run unwinding
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "failing rank");
  }
  EXPECT_EQ(ending, Ending::kAborted);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 25.0);
  // The device still works for the next communicator; abort() ends it as aborted too.
  std::unique_ptr<NcclCommunicator> again = one_rank_world(ctx, store, "after");
  sum_on_one_rank(*again, ctx);
  again->abort("test");
  EXPECT_EQ(again->close(), Ending::kAborted);
}

}  // namespace
}  // namespace shardlm::dist
