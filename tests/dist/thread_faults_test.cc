// Failure paths of the in-process communicator: a hung rank (timeout), a killed rank, a rank
// whose thread throws, abort(), and an aborted group. Each must finish fast with a message
// naming the group, the operation, the caller's rank and the missing ranks — never hang.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(ThreadFaults, HungRankMakesEverySurvivorTimeOutNamingIt) {
  const int n = 4;
  ThreadWorld world(n, {.timeout = 200ms});
  std::atomic<int> failed{0};
  const auto t0 = Clock::now();
  auto errors = world.run([&](Communicator& comm) {
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {5});
    if (comm.rank() == 3) {
      // Hangs (does not return, so it is not marked finished) until the others gave up.
      while (failed.load() < n - 1 && seconds_since(t0) < 10) std::this_thread::sleep_for(5ms);
      return;
    }
    try {
      comm.all_reduce(t.view());
    } catch (...) {
      ++failed;
      throw;
    }
  });
  EXPECT_LT(seconds_since(t0), 3.0);
  EXPECT_FALSE(errors[3]);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kTimeout,
                 {"group 'world'", "all_reduce(sum, fp32, 5 elements) #0",
                  "rank " + std::to_string(r) + " (world rank " + std::to_string(r) + ")",
                  "ranks [3] (world ranks [3]) did not arrive"});
  }
}

TEST(ThreadFaults, TimeoutInSubgroupNamesGroupAndWorldRanks) {
  ThreadWorld world(4, {.timeout = 150ms});
  std::atomic<bool> done{false};
  auto errors = world.run([&](Communicator& comm) {
    auto tp = comm.split(comm.rank() / 2, comm.rank(), "tp");
    if (comm.rank() == 3) {
      while (!done.load()) std::this_thread::sleep_for(5ms);
      return;
    }
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {2});
    if (comm.rank() == 2) {
      try {
        tp->all_reduce(t.view());
      } catch (...) {
        done = true;
        throw;
      }
    } else {
      tp->all_reduce(t.view());  // group {0, 1} completes normally
    }
  });
  EXPECT_FALSE(errors[0]);
  EXPECT_FALSE(errors[1]);
  ASSERT_TRUE(errors[2]);
  expect_error([&] { std::rethrow_exception(errors[2]); }, ErrorKind::kTimeout,
               {"group 'tp'", "rank 0 (world rank 2)", "ranks [1] (world ranks [3])",
                "timed out after 0.150 s"});
}

TEST(ThreadFaults, PointToPointTimeoutNamesThePeer) {
  ThreadWorld world(2, {.timeout = 100ms});
  std::atomic<bool> done{false};
  auto errors = world.run([&](Communicator& comm) {
    if (comm.rank() == 0) {
      while (!done.load()) std::this_thread::sleep_for(5ms);
      return;
    }
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {2});
    try {
      comm.recv(t.view(), 0);
    } catch (...) {
      done = true;
      throw;
    }
  });
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout,
               {"recv(fp32, 2 elements) from rank 0 #0", "ranks [0] (world ranks [0])"});
}

TEST(ThreadFaults, KilledRankMakesPeersFailFastLongBeforeTheTimeout) {
  const int n = 4;
  ThreadWorld world(n, {.timeout = 60s});
  std::atomic<bool> killed{false};
  const auto t0 = Clock::now();
  std::thread killer([&] {
    std::this_thread::sleep_for(50ms);
    world.TEST_kill_rank(1);
    killed = true;
  });
  auto errors = world.run([&](Communicator& comm) {
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {3});
    if (comm.rank() == 1) {
      while (!killed.load()) std::this_thread::sleep_for(2ms);
      comm.all_reduce(t.view());  // a dead rank cannot communicate either
      return;
    }
    comm.all_reduce(t.view());
  });
  killer.join();
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_TRUE(world.is_rank_dead(1));
  for (int r : {0, 2, 3}) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kTimeout,
                 {"all_reduce", "at rank " + std::to_string(r), "rank 1 (world rank 1) is dead",
                  "killed by test"});
  }
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout,
               {"this rank is marked dead"});
}

TEST(ThreadFaults, ThrowingRankIsTheRootCauseAndPeersFailFast) {
  ThreadWorld world(3, {.timeout = 60s});
  const auto t0 = Clock::now();
  auto errors = world.run([](Communicator& comm) {
    if (comm.rank() == 2) throw Error(ErrorKind::kIo, "rank 2 could not read its shard");
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {3});
    comm.all_reduce(t.view());
  });
  EXPECT_LT(seconds_since(t0), 5.0);
  for (int r : {0, 1}) {
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kTimeout,
                 {"rank 2 (world rank 2) is dead", "could not read its shard"});
  }
  expect_error([&] { rethrow_first_error(errors); }, ErrorKind::kIo, {"could not read"});
}

TEST(ThreadFaults, RankThatReturnsEarlyIsReportedAsFinished) {
  ThreadWorld world(2, {.timeout = 60s});
  auto errors = world.run([](Communicator& comm) {
    if (comm.rank() == 0) return;  // took another code path
    comm.barrier();
  });
  EXPECT_FALSE(errors[0]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout,
               {"barrier #0", "rank 0 (world rank 0) is dead", "finished"});
}

TEST(ThreadFaults, AbortFailsPendingAndLaterOperations) {
  ThreadWorld world(3, {.timeout = 60s});
  auto errors = world.run([](Communicator& comm) {
    OwnedTensor t = OwnedTensor::zeros(DType::kF32, {3});
    if (comm.rank() == 0) {
      std::this_thread::sleep_for(30ms);
      comm.abort("loss became NaN");
      expect_error([&] { comm.all_reduce(t.view()); }, ErrorKind::kTimeout,
                   {"aborted earlier", "loss became NaN"});
      return;
    }
    expect_error([&] { comm.all_reduce(t.view()); }, ErrorKind::kTimeout,
                 {"aborted by rank 0", "loss became NaN", "ranks [0] (world ranks [0])"});
    expect_error([&] { comm.barrier(); }, ErrorKind::kTimeout, {"aborted earlier"});
  });
  for (auto& e : errors) EXPECT_FALSE(e);
}

TEST(ThreadFaults, CommunicatorIsHandedOutOncePerRank) {
  ThreadWorld world(2);
  auto c0 = world.communicator(0);
  expect_error([&] { world.communicator(0); }, ErrorKind::kInvalidArgument, {"already"});
  expect_error([&] { world.communicator(2); }, ErrorKind::kInvalidArgument, {"outside [0, 2)"});
  EXPECT_EQ(c0->rank(), 0);
  EXPECT_EQ(c0->size(), 2);
}

}  // namespace
}  // namespace shardlm::dist
