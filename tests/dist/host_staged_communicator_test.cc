// HostStagedCommunicator on the CPU, with every host tensor staged (stage_host_tensors): each
// operation must give exactly what the unstaged ThreadWorld communicator gives, including the
// aliasing the trainer relies on (in-place all-gather into the buffer that holds the shard,
// reduce-scatter into a slice of its input), outputs written only at wait(), subgroups staged
// too, and failures reported as before. The same code stages device tensors on one GPU
// (tests/train/layout_gpu_test.cc).
#include "shardlm/dist/host_staged_communicator.h"

#include <gtest/gtest.h>

#include <array>

#include "rank_threads.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {
namespace {

using namespace testing;

std::unique_ptr<Communicator> staged(DeviceContext& cpu, Communicator& world) {
  return std::make_unique<HostStagedCommunicator>(cpu, world.split(0, world.rank(), "world"),
                                                  HostStagedOptions{.stage_host_tensors = true});
}

OwnedTensor values(DType dtype, int64_t n, int rank, uint64_t seed) {
  OwnedTensor t = OwnedTensor::empty(dtype, {n});
  fill_test_values(t.view(), rank, seed);
  return t;
}

TEST(HostStagedCommunicator, CollectivesEqualTheUnstagedOnes) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF64}) {
    SCOPED_TRACE(dtype_name(dtype));
    run_ranks(4, [&](Communicator& world) {
      DeviceContext cpu = DeviceContext::cpu();
      auto plain = world.split(0, world.rank(), "plain");
      auto comm = staged(cpu, world);
      const int r = world.rank(), n = 4;
      const int64_t k = 37;
      // all_reduce (in place), sum and max.
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
        OwnedTensor a = values(dtype, k * n, r, 1), b = values(dtype, k * n, r, 1);
        comm->all_reduce(a.view(), op);
        plain->all_reduce(b.view(), op);
        EXPECT_TRUE(bytes_equal(a.view(), b.view())) << reduce_op_name(op);
      }
      // reduce_scatter into a slice of its own input (the distributed optimizer's layout).
      OwnedTensor a = values(dtype, k * n, r, 2), b = values(dtype, k * n, r, 2);
      comm->reduce_scatter(a.view().flat_view(r * k, Shape({k})), a.view());
      plain->reduce_scatter(b.view().flat_view(r * k, Shape({k})), b.view());
      EXPECT_TRUE(bytes_equal(a.view(), b.view())) << "reduce_scatter in place";
      // all_gather from a slice of the output (the parameter gather).
      a = values(dtype, k * n, r, 3), b = values(dtype, k * n, r, 3);
      comm->all_gather(a.view(), a.view().flat_view(r * k, Shape({k})));
      plain->all_gather(b.view(), b.view().flat_view(r * k, Shape({k})));
      EXPECT_TRUE(bytes_equal(a.view(), b.view())) << "all_gather in place";
      // broadcast from rank 2.
      a = values(dtype, k, r, 4), b = values(dtype, k, r, 4);
      comm->broadcast(a.view(), 2);
      plain->broadcast(b.view(), 2);
      EXPECT_TRUE(bytes_equal(a.view(), b.view())) << "broadcast";
    });
  }
}

TEST(HostStagedCommunicator, OutputsAreWrittenAtWait) {
  run_ranks(2, [&](Communicator& world) {
    DeviceContext cpu = DeviceContext::cpu();
    auto comm = staged(cpu, world);
    OwnedTensor t = values(DType::kF32, 8, comm->rank(), 5);
    const OwnedTensor before = values(DType::kF32, 8, comm->rank(), 5);
    CommHandle h = comm->all_reduce_async(t.view());
    comm->barrier();  // the host operation has certainly run on both ranks by now
    EXPECT_TRUE(bytes_equal(t.view(), before.view())) << "written before wait()";
    h.wait();
    EXPECT_FALSE(bytes_equal(t.view(), before.view())) << "not written by wait()";
  });
}

TEST(HostStagedCommunicator, PointToPointAndSubgroups) {
  run_ranks(4, [&](Communicator& world) {
    DeviceContext cpu = DeviceContext::cpu();
    auto comm = staged(cpu, world);
    const int r = comm->rank();
    // Pairs {0,1} and {2,3} exchange both ways in one batch, as pipeline stages do.
    auto pair = comm->split(r / 2, r, "pair");
    ASSERT_NE(dynamic_cast<HostStagedCommunicator*>(pair.get()), nullptr);
    const int peer = 1 - pair->rank();
    OwnedTensor mine = values(DType::kBF16, 16, r, 6), theirs = OwnedTensor::zeros(DType::kBF16, {16});
    const std::array<P2POp, 2> ops{P2POp{P2POp::Kind::kSend, mine.view(), peer},
                                   P2POp{P2POp::Kind::kRecv, theirs.view(), peer}};
    pair->batch_send_recv(ops);
    const OwnedTensor expected = values(DType::kBF16, 16, (r / 2) * 2 + peer, 6);
    EXPECT_TRUE(bytes_equal(theirs.view(), expected.view()));
    // Plain send / recv: rank 0 -> 3 over the world group.
    OwnedTensor x = values(DType::kI32, 5, r, 7);
    if (r == 0) comm->send(x.view(), 3);
    if (r == 3) {
      comm->recv(x.view(), 0);
      EXPECT_TRUE(bytes_equal(x.view(), values(DType::kI32, 5, 0, 7).view()));
    }
    EXPECT_EQ(comm->split(kNoColor, r, "none"), nullptr);
  });
}

// defer_collectives: a collective reads its inputs at wait(), so a change made between issue
// and wait shows in the result; sends and receives still run at issue (a pipeline exchange
// waited in any order completes).
TEST(HostStagedCommunicator, DeferredCollectivesReadTheirInputsAtWait) {
  run_ranks(2, [&](Communicator& world) {
    DeviceContext cpu = DeviceContext::cpu();
    HostStagedCommunicator comm(cpu, world.split(0, world.rank(), "world"),
                                {.stage_host_tensors = true, .defer_collectives = true});
    const int r = comm.rank();
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {3});
    for (int i = 0; i < 3; ++i) t.view().data<float>()[i] = 1.0f;
    CommHandle h = comm.all_reduce_async(t.view());
    for (int i = 0; i < 3; ++i) t.view().data<float>()[i] = static_cast<float>(10 * (r + 1));
    h.wait();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(t.view().data<float>()[i], 30.0f) << "read at issue";
    // Receive first, then send, each waited after both are issued: not deferred, no deadlock.
    OwnedTensor in = OwnedTensor::zeros(DType::kF32, {2}), out = values(DType::kF32, 2, r, 9);
    CommHandle recv = comm.recv_async(in.view(), 1 - r);
    CommHandle send = comm.send_async(out.view(), 1 - r);
    recv.wait();
    send.wait();
    EXPECT_TRUE(bytes_equal(in.view(), values(DType::kF32, 2, 1 - r, 9).view()));
  });
}

TEST(HostStagedCommunicator, AMissingRankIsStillNamed) {
  ThreadWorld world(2, {.timeout = std::chrono::milliseconds(500)});
  const auto errors = world.run([&](Communicator& w) {
    DeviceContext cpu = DeviceContext::cpu();
    auto comm = staged(cpu, w);
    if (comm->rank() == 1) return;  // never joins the all-reduce
    OwnedTensor t = values(DType::kF32, 4, 0, 8);
    expect_error([&] { comm->all_reduce(t.view()); }, ErrorKind::kTimeout,
                 {"all_reduce", "world rank 1"});
  });
  rethrow_first_error(errors);
}

}  // namespace
}  // namespace shardlm::dist
