// all_to_all_counts and all_to_all_v on the CPU backends: 1 to 4 thread ranks with random row
// counts (zeros, a rank that sends nothing, a rank that receives nothing), fp32 / fp64 / int32
// rows of several trailing shapes checked element by element against the permutation; the same
// through HostStagedCommunicator and the socket backend; async exchanges overlapping other
// work; argument errors; and ranks with inconsistent counts failing fast, never hanging or
// writing past their output.
#include "shardlm/dist/all_to_all.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "all_to_all_cases.h"
#include "rank_threads.h"
#include "shardlm/dist/host_staged_communicator.h"
#include "socket_ranks.h"

namespace shardlm::dist {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

struct Payload {
  DType dtype;
  Shape row;  // trailing shape of one row
};
const Payload kPayloads[] = {
    {DType::kF32, {3}}, {DType::kF64, {2, 3}}, {DType::kI32, {5}}};

TEST(AllToAllV, DeliversThePermutationForOneToFourRanksAndEveryDtype) {
  for (int n = 1; n <= 4; ++n) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      const RowCounts c = random_row_counts(n, seed);
      run_ranks(n, [&](Communicator& comm) {
        DeviceContext ctx = DeviceContext::cpu();
        for (const Payload& p : kPayloads) {
          exchange_and_check(comm, ctx, c, p.dtype, p.row,
                             std::to_string(n) + " ranks, seed " + std::to_string(seed) + ", " +
                                 dtype_name(p.dtype));
        }
      });
    }
  }
}

TEST(AllToAllV, EdgeCountsAllZeroOnlySelfAndOneHotRank) {
  const int n = 3;
  const RowCounts cases[] = {
      {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}},  // nothing moves anywhere
      {{2, 0, 0}, {0, 1, 0}, {0, 0, 3}},  // only blocks to self: no message posted
      {{0, 5, 0}, {0, 7, 0}, {0, 6, 0}},  // every rank sends only to rank 1
  };
  for (const RowCounts& c : cases) {
    run_ranks(n, [&](Communicator& comm) {
      DeviceContext ctx = DeviceContext::cpu();
      exchange_and_check(comm, ctx, c, DType::kF32, {4}, "edge case");
    });
  }
}

TEST(AllToAllCounts, IsTheTransposeOfTheSendCounts) {
  for (int n = 1; n <= 4; ++n) {
    RowCounts c(n, std::vector<int64_t>(n));
    for (int p = 0; p < n; ++p)
      for (int q = 0; q < n; ++q) c[p][q] = (p + q) % 3 == 0 ? 0 : (int64_t{p + 1} << 33) + q;
    run_ranks(n, [&](Communicator& comm) {
      DeviceContext ctx = DeviceContext::cpu();
      EXPECT_EQ(all_to_all_counts(comm, ctx, c[comm.rank()]), column(c, comm.rank()))
          << n << " ranks, rank " << comm.rank();
    });
  }
}

TEST(AllToAllV, StagedAndSocketBackendsDeliverTheSamePermutation) {
  const int n = 3;
  const RowCounts c = random_row_counts(n, 5);
  // Host staging (the --distributed-backend gloo wrapper), staging host tensors too and
  // deferring collectives, so the staged batch of sends and receives is what runs.
  run_ranks(n, [&](Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    HostStagedCommunicator staged(ctx, comm.split(0, comm.rank(), "staged"),
                                  {.stage_host_tensors = true, .defer_collectives = true});
    for (const Payload& p : kPayloads)
      exchange_and_check(staged, ctx, c, p.dtype, p.row,
                         std::string("staged ") + dtype_name(p.dtype));
  });
  run_socket_ranks(n, [&](Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    for (const Payload& p : kPayloads)
      exchange_and_check(comm, ctx, c, p.dtype, p.row,
                         std::string("socket ") + dtype_name(p.dtype));
  });
}

TEST(AllToAllV, AsyncExchangesOverlapOtherWorkAndCanBeWaitedOutOfOrder) {
  const int n = 3;
  const RowCounts a = random_row_counts(n, 2), b = random_row_counts(n, 3);
  const Shape row{2};
  run_ranks(n, [&](Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    const int me = comm.rank();
    auto sum = [](const std::vector<int64_t>& v) {
      int64_t s = 0;
      for (int64_t x : v) s += x;
      return s;
    };
    OwnedTensor in_a = encoded_input(me, sum(a[me]), DType::kF32, row);
    OwnedTensor in_b = encoded_input(me, sum(b[me]), DType::kF64, row);
    OwnedTensor out_a = OwnedTensor::zeros(DType::kF32, rows_of(sum(column(a, me)), row));
    OwnedTensor out_b = OwnedTensor::zeros(DType::kF64, rows_of(sum(column(b, me)), row));
    CommHandle ha = all_to_all_v_async(comm, ctx, out_a.view(), in_a.view(), a[me], column(a, me));
    // Another collective of the same group while the exchange is in flight ...
    OwnedTensor x = OwnedTensor::empty(DType::kF64, {1});
    x.view().data<double>()[0] = me + 1;
    comm.all_reduce(x.view());
    EXPECT_EQ(x.view().data<double>()[0], n * (n + 1) / 2);
    // ... a second exchange, and local work, before either is waited for.
    CommHandle hb = all_to_all_v_async(comm, ctx, out_b.view(), in_b.view(), b[me], column(b, me));
    double local = 0;
    for (int i = 1; i <= 1000; ++i) local += 1.0 / i;
    EXPECT_GT(local, 7.0);
    hb.wait();
    ha.wait();
    EXPECT_TRUE(ha.is_completed() && hb.is_completed());
    expect_received(out_a.view(), a, me, row, "first exchange (fp32)");
    expect_received(out_b.view(), b, me, row, "second exchange (fp64)");
  });
}

TEST(AllToAllV, RejectsBadArgumentsNamingFunctionRankAndNumbers) {
  run_ranks(2, [](Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    const int me = comm.rank();
    const std::string at = "all_to_all_v on group 'world' (rank " + std::to_string(me) + " of 2)";
    OwnedTensor in = OwnedTensor::zeros(DType::kF32, {3, 4});
    OwnedTensor out = OwnedTensor::zeros(DType::kF32, {3, 4});
    const std::vector<int64_t> ok = {me == 0 ? 1 : 2, me == 0 ? 2 : 1};  // [1, 2] / [2, 1]
    const std::vector<int64_t> three = {1, 1, 1};
    auto call = [&](const Tensor& o, const Tensor& i, std::span<const int64_t> s,
                    std::span<const int64_t> r) { all_to_all_v(comm, ctx, o, i, s, r); };
    expect_error([&] { call(out, in, three, ok); }, ErrorKind::kInvalidArgument,
                 {at, "send_rows has 3 entries but the group has 2 ranks"});
    expect_error([&] { call(out, in, ok, three); }, ErrorKind::kInvalidArgument,
                 {at, "recv_rows has 3 entries"});
    const std::vector<int64_t> negative = {4, -1};
    expect_error([&] { call(out, in, negative, ok); }, ErrorKind::kInvalidArgument,
                 {at, "send_rows[1] is -1 in [4, -1]"});
    const std::vector<int64_t> four = {me == 0 ? 1 : 2, 3 - me};  // sums to 4, self count kept
    expect_error([&] { call(out, in, four, ok); }, ErrorKind::kInvalidArgument,
                 {at, "in [3, 4] has 3 rows but send_rows", "sums to 4"});
    expect_error([&] { call(out, in, ok, four); }, ErrorKind::kInvalidArgument,
                 {at, "out [3, 4] has 3 rows but recv_rows", "sums to 4"});
    OwnedTensor out_f64 = OwnedTensor::zeros(DType::kF64, {3, 4});
    expect_error([&] { call(out_f64, in, ok, ok); }, ErrorKind::kInvalidArgument,
                 {at, "in fp32[3, 4] and out fp64[3, 4] must have the same dtype"});
    OwnedTensor out_wide = OwnedTensor::zeros(DType::kF32, {3, 5});
    expect_error([&] { call(out_wide, in, ok, ok); }, ErrorKind::kInvalidArgument,
                 {at, "same shape after the row axis"});
    const std::vector<int64_t> swapped = {ok[1], ok[0]};
    expect_error([&] { call(out, in, ok, swapped); }, ErrorKind::kInvalidArgument,
                 {at, "send_rows[" + std::to_string(me) + "] = " + std::to_string(ok[me]) +
                          " rows to itself but recv_rows[" + std::to_string(me) + "] = " +
                          std::to_string(swapped[me])});
    expect_error([&] { call(in.view(), in.view(), ok, ok); }, ErrorKind::kInvalidArgument,
                 {at, "in and out overlap"});
    OwnedTensor scalar = OwnedTensor::zeros(DType::kF32, {});
    expect_error([&] { call(out, scalar, ok, ok); }, ErrorKind::kInvalidArgument,
                 {at, "has no row axis"});
    const Tensor on_gpu(in.view().raw(), DType::kF32, {3, 4}, Device::cuda(0));
    expect_error([&] { call(out, on_gpu, ok, ok); }, ErrorKind::kInvalidArgument,
                 {at, "in is on cuda:0 but the DeviceContext is on cpu"});
    expect_error([&] { all_to_all_counts(comm, ctx, three); }, ErrorKind::kInvalidArgument,
                 {"all_to_all_counts on group 'world' (rank " + std::to_string(me) + " of 2)",
                  "send_counts has 3 entries but the group has 2 ranks"});
    // Nothing was posted: the group still works, with counts from all_to_all_counts.
    const std::vector<int64_t> recv = all_to_all_counts(comm, ctx, ok);
    EXPECT_EQ(recv, ok);  // [[1, 2], [2, 1]] is symmetric
    all_to_all_v(comm, ctx, out, in, ok, recv);
  });
}

// Runs a program on 2 ranks with a 200 ms deadline and returns each rank's error.
using TwoRanks = std::function<std::vector<std::exception_ptr>(
    const std::function<void(Communicator&)>&)>;
const TwoRanks kThreads = [](const std::function<void(Communicator&)>& fn) {
  ThreadWorld world(2, {.timeout = 200ms});
  return world.run(fn);
};
const TwoRanks kSockets = [](const std::function<void(Communicator&)>& fn) {
  return run_socket_ranks_collect(2, fn, 200ms);
};

// Rank 0 sends `rows_to_1` rows to rank 1, which expects 2; everything else is consistent.
// Returns each rank's error. out sits inside a larger buffer whose tail must stay untouched.
std::vector<std::exception_ptr> inconsistent_exchange(const TwoRanks& run, int64_t rows_to_1) {
  std::atomic<int> done{0};
  return run([&](Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    const int me = comm.rank();
    const std::vector<int64_t> send = me == 0 ? std::vector<int64_t>{1, rows_to_1}
                                              : std::vector<int64_t>{1, 1};
    const std::vector<int64_t> recv = me == 0 ? std::vector<int64_t>{1, 1}
                                              : std::vector<int64_t>{2, 1};
    int64_t n_send = 0, n_recv = 0;
    for (int64_t x : send) n_send += x;
    for (int64_t x : recv) n_recv += x;
    OwnedTensor in = encoded_input(me, n_send, DType::kF32, {3});
    OwnedTensor buffer = OwnedTensor::empty(DType::kF32, {n_recv + 4, 3});
    ops::fill(ctx, buffer.view(), 7.0);
    const Tensor out = buffer.view().slice(0, n_recv);
    struct Finish {  // stays alive (no early "finished" verdict) until both ranks are done
      std::atomic<int>& done;
      ~Finish() {
        ++done;
        while (done.load() < 2) std::this_thread::sleep_for(2ms);
      }
    } finish{done};
    try {
      all_to_all_v(comm, ctx, out, in.view(), send, recv);
    } catch (...) {
      for (int64_t i = n_recv * 3; i < buffer.view().numel(); ++i)
        EXPECT_EQ(buffer.view().data<float>()[i], 7.0f) << "rank " << me << " wrote past out";
      throw;
    }
  });
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(AllToAllV, InconsistentNonzeroCountsAreAMismatchOnBothRanks) {
  const auto t0 = Clock::now();
  const std::vector<std::exception_ptr> errors = inconsistent_exchange(kThreads, 3);
  EXPECT_LT(seconds_since(t0), 2.0);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r;
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kInvalidArgument,
                 {"point-to-point mismatch", "rank 0 (world rank 0) sends send(fp32, 9 elements)",
                  "rank 1 (world rank 1) receives recv(fp32, 6 elements)"});
  }
}

TEST(AllToAllV, ReceiveFromARankThatSendsNothingTimesOutNamingIt) {
  const auto t0 = Clock::now();
  const std::vector<std::exception_ptr> errors = inconsistent_exchange(kThreads, 0);
  EXPECT_LT(seconds_since(t0), 2.0);
  EXPECT_FALSE(errors[0]);  // rank 0's own exchange was complete
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout,
               {"recv(fp32, 6 elements) from rank 0 #0", "timed out after 0.200 s",
                "ranks [0] (world ranks [0]) did not arrive"});
}

TEST(AllToAllV, SocketBackendReportsInconsistentCountsAtTheReceiver) {
  const auto t0 = Clock::now();
  std::vector<std::exception_ptr> errors = inconsistent_exchange(kSockets, 3);
  EXPECT_FALSE(errors[0]);  // the sender's frames left; only the receiver can compare
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kInvalidArgument,
               {"mismatch at recv(fp32, 6 elements) from rank 0 #0",
                "rank 0 (world rank 0) called send(fp32, 9 elements)"});
  errors = inconsistent_exchange(kSockets, 0);
  EXPECT_FALSE(errors[0]);
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout,
               {"recv(fp32, 6 elements) from rank 0 #0", "timed out"});
  EXPECT_LT(seconds_since(t0), 3.0);
}

}  // namespace
}  // namespace shardlm::dist
