// all_to_all_counts and all_to_all_v with device tensors: thread ranks sharing GPU 0 through
// HostStagedCommunicator (counts through device memory, device slices, the local block copied
// on the rank's stream), one NCCL rank (local copy only), and two NCCL ranks on two GPUs as two
// threads of this process (skipped where fewer than two GPUs are visible): random counts with
// zeros and silent ranks, every element checked (tests/dist/all_to_all_cases.h).
#include <cuda_runtime.h>
#include <gtest/gtest.h>


#include "all_to_all_cases.h"
#include "rank_threads.h"
#include "shardlm/dist/host_staged_communicator.h"
#include "shardlm/dist/nccl_communicator.h"
#include "shardlm/dist/tcp_store.h"
#include "tests/testing/cuda_tensors.h"

namespace shardlm::dist {
namespace {

using namespace testing;
using shardlm::testing::cuda_device_available;
using shardlm::testing::make_cuda_context;

void exchange_every_payload(Communicator& comm, DeviceContext& ctx, const RowCounts& c,
                            const std::string& what) {
  exchange_and_check(comm, ctx, c, DType::kF32, {3}, what + " fp32");
  exchange_and_check(comm, ctx, c, DType::kI32, {2, 2}, what + " int32");
  exchange_and_check(comm, ctx, c, DType::kF64, {1}, what + " fp64");
}

TEST(AllToAllGpu, HostStagedThreadRanksShareOneGpu) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  for (int n : {2, 3}) {
    for (uint64_t seed : {0u, 1u}) {
      const RowCounts c = random_row_counts(n, seed);
      run_ranks(n, [&](Communicator& comm) {
        DeviceContext ctx = make_cuda_context(0);
        HostStagedCommunicator staged(ctx, comm.split(0, comm.rank(), "staged"));
        exchange_every_payload(staged, ctx, c, "staged, " + std::to_string(n) + " ranks");
      });
    }
  }
}

TEST(AllToAllGpu, NcclOneRankCopiesItsBlockLocally) {
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  DeviceContext ctx = make_cuda_context(0);
  TcpStore store({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  auto world = NcclCommunicator::create_world(ctx, store, 0, 1, {.timeout = 30s, .name = "a2a1"});
  exchange_every_payload(*world, ctx, {{5}}, "nccl, 1 rank");
  exchange_every_payload(*world, ctx, {{0}}, "nccl, 1 rank, no rows");
}

TEST(AllToAllGpu, NcclTwoGpusAsThreads) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2)
    GTEST_SKIP() << "needs 2 GPUs, " << devices << " visible";
  const int n = 2;
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 60s});
  rethrow_first_error(run_threads_collect(n, [&](int r) {
    DeviceContext ctx = make_cuda_context(r);
    TcpStore store({.host = "127.0.0.1", .port = server.port(), .timeout = 60s});
    auto world =
        NcclCommunicator::create_world(ctx, store, r, n, {.timeout = 60s, .name = "a2a2"});
    for (uint64_t seed = 0; seed < 4; ++seed)  // silent sender / receiver by seed
      exchange_every_payload(*world, ctx, random_row_counts(n, seed),
                             "nccl seed " + std::to_string(seed));
    exchange_every_payload(*world, ctx, {{0, 0}, {0, 0}}, "nccl, nothing moves");
    exchange_every_payload(*world, ctx, {{0, 6}, {0, 2}}, "nccl, all to rank 1");
    world->barrier();
  }));
}

}  // namespace
}  // namespace shardlm::dist
