// The cross-process CPU communicator: every operation against the in-process (thread) backend,
// byte for byte, on random tensors of every dtype; subgroups; async overlap; mismatches; a rank
// that shuts down, hangs, or (in a forked process) is killed.
//
// Most tests run each rank on a thread of this process with its OWN socket communicator (its
// own TcpStore client, listening socket and connections), which exercises the whole protocol;
// the kill test forks real processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <optional>
#include <thread>

#include "socket_ranks.h"
#include "shardlm/dist/socket_communicator.h"
#include "shardlm/dist/tcp_store.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {
namespace {

using namespace testing;
using Bytes = std::vector<std::byte>;
// A rank's program: returns the buffers to compare across backends.
using RankProgram = std::function<std::vector<Bytes>(Communicator&)>;

Bytes bytes_of(const Tensor& t) {
  Bytes b(t.nbytes());
  if (t.nbytes()) std::memcpy(b.data(), t.raw(), t.nbytes());
  return b;
}

// Runs `program` on both backends and expects identical bytes on every rank.
void expect_same_as_threads(int n, const RankProgram& program) {
  std::vector<std::vector<Bytes>> socket_out(n), thread_out(n);
  run_socket_ranks(n, [&](Communicator& c) { socket_out[c.rank()] = program(c); });
  run_ranks(n, [&](Communicator& c) { thread_out[c.rank()] = program(c); });
  for (int r = 0; r < n; ++r) {
    ASSERT_EQ(socket_out[r].size(), thread_out[r].size());
    for (size_t i = 0; i < socket_out[r].size(); ++i) {
      EXPECT_TRUE(socket_out[r][i] == thread_out[r][i]) << "rank " << r << ", buffer " << i;
    }
  }
}

const DType kReduceDTypes[] = {DType::kF64, DType::kF32, DType::kBF16,
                               DType::kF16, DType::kI32, DType::kI64};
const ReduceOp kOps[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin};

TEST(SocketCommunicator, AllReduceMatchesThreadBackendBitForBit) {
  // Every dtype and op on 3 ranks; the float sums again on 4 (even split of the ranges).
  for (int n : {3, 4}) {
    expect_same_as_threads(n, [n](Communicator& c) {
      std::vector<Bytes> out;
      uint64_t seed = 1;
      for (DType dt : kReduceDTypes) {
        for (ReduceOp op : kOps) {
          if (n == 4 && (op != ReduceOp::kSum || !dtype_is_float(dt))) continue;
          for (int64_t numel : {0, 2, 37, 1000}) {
            OwnedTensor t = OwnedTensor::empty(dt, {numel});
            fill_test_values(t, c.rank(), ++seed);
            c.all_reduce(t.view(), op);
            out.push_back(bytes_of(t));
          }
        }
      }
      // A large fp32 buffer (uneven ranges, several socket reads per frame).
      OwnedTensor big = OwnedTensor::empty(DType::kF32, {65'537});
      fill_test_values(big, c.rank(), 99);
      c.all_reduce(big.view());
      out.push_back(bytes_of(big));
      return out;
    });
  }
}

TEST(SocketCommunicator, ReduceScatterMatchesThreadBackend) {
  expect_same_as_threads(3, [](Communicator& c) {
    std::vector<Bytes> out;
    uint64_t seed = 100;
    for (DType dt : kReduceDTypes) {
      for (ReduceOp op : kOps) {
        for (int64_t chunk : {0, 1, 7, 250}) {
          OwnedTensor in = OwnedTensor::empty(dt, {chunk * c.size()});
          OwnedTensor o = OwnedTensor::empty(dt, {chunk});
          fill_test_values(in, c.rank(), ++seed);
          c.reduce_scatter(o.view(), in.view(), op);
          out.push_back(bytes_of(o));
          // In place: the output is this rank's block of the input (distributed optimizer).
          fill_test_values(in, c.rank(), seed);
          Tensor mine = in.view().flat_view(chunk * c.rank(), {chunk});
          c.reduce_scatter(mine, in.view(), op);
          out.push_back(bytes_of(mine));
        }
      }
    }
    return out;
  });
}

TEST(SocketCommunicator, AllGatherAndBroadcastMatchThreadBackend) {
  expect_same_as_threads(4, [](Communicator& c) {
    std::vector<Bytes> out;
    uint64_t seed = 200;
    for (DType dt : {DType::kF64, DType::kF32, DType::kBF16, DType::kI32, DType::kU16}) {
      for (int64_t chunk : {0, 1, 13, 4096}) {
        OwnedTensor in = OwnedTensor::empty(dt == DType::kU16 ? DType::kF16 : dt, {chunk});
        fill_test_values(in, c.rank(), ++seed);
        Tensor in_view = in.view();
        if (dt == DType::kU16) in_view = Tensor(in.view().raw(), DType::kU16, {chunk}, Device::cpu());
        OwnedTensor o = OwnedTensor::empty(in_view.dtype(), {chunk * c.size()});
        c.all_gather(o.view(), in_view);
        out.push_back(bytes_of(o));
        // In place: the input is this rank's slot of the output.
        OwnedTensor o2 = OwnedTensor::zeros(in_view.dtype(), {chunk * c.size()});
        Tensor slot = o2.view().flat_view(chunk * c.rank(), {chunk});
        std::memcpy(slot.raw(), in_view.raw(), in_view.nbytes());
        c.all_gather(o2.view(), slot);
        out.push_back(bytes_of(o2));
        for (int root = 0; root < c.size(); ++root) {
          OwnedTensor b = OwnedTensor::empty(in_view.dtype(), {chunk});
          std::memcpy(b.view().raw(), in_view.raw(), in_view.nbytes());
          c.broadcast(b.view(), root);
          out.push_back(bytes_of(b));
        }
      }
    }
    c.barrier();
    return out;
  });
}

TEST(SocketCommunicator, PointToPointRingsSelfSendsAndOrdering) {
  expect_same_as_threads(3, [](Communicator& c) {
    std::vector<Bytes> out;
    const int n = c.size(), next = (c.rank() + 1) % n, prev = (c.rank() + n - 1) % n;
    // Both directions at once, several rounds, as pipeline stages do.
    for (int round = 0; round < 3; ++round) {
      OwnedTensor s1 = OwnedTensor::empty(DType::kF32, {17}), s2 = OwnedTensor::empty(DType::kF32, {17});
      OwnedTensor r1 = OwnedTensor::zeros(DType::kF32, {17}), r2 = OwnedTensor::zeros(DType::kF32, {17});
      fill_test_values(s1, c.rank(), 300 + round);
      fill_test_values(s2, c.rank(), 400 + round);
      const P2POp ops[] = {{P2POp::Kind::kRecv, r1.view(), prev},
                           {P2POp::Kind::kSend, s1.view(), next},
                           {P2POp::Kind::kSend, s2.view(), prev},
                           {P2POp::Kind::kRecv, r2.view(), next}};
      c.batch_send_recv(ops);
      out.push_back(bytes_of(r1));
      out.push_back(bytes_of(r2));
    }
    // Receives posted before sends on every rank, waited out of order.
    OwnedTensor a = OwnedTensor::zeros(DType::kI64, {5}), b = OwnedTensor::zeros(DType::kI64, {6});
    CommHandle ha = c.recv_async(a.view(), prev);
    CommHandle hb = c.recv_async(b.view(), prev);
    OwnedTensor sa = OwnedTensor::empty(DType::kI64, {5}), sb = OwnedTensor::empty(DType::kI64, {6});
    fill_test_values(sa, c.rank(), 500);
    fill_test_values(sb, c.rank(), 501);
    c.send(sa.view(), next);
    c.send(sb.view(), next);
    hb.wait();
    ha.wait();
    out.push_back(bytes_of(a));
    out.push_back(bytes_of(b));
    // To itself.
    OwnedTensor self_in = OwnedTensor::empty(DType::kF64, {3});
    OwnedTensor self_out = OwnedTensor::zeros(DType::kF64, {3});
    fill_test_values(self_in, c.rank(), 502);
    CommHandle hs = c.recv_async(self_out.view(), c.rank());
    c.send(self_in.view(), c.rank());
    hs.wait();
    out.push_back(bytes_of(self_out));
    return out;
  });
}

TEST(SocketCommunicator, AsyncOperationsOverlapAndGroupsProgressIndependently) {
  expect_same_as_threads(4, [](Communicator& c) {
    std::vector<Bytes> out;
    auto tp = c.split(c.rank() / 2, c.rank(), "tp");  // {0,1} {2,3}
    auto dp = c.split(c.rank() % 2, c.rank(), "dp");  // {0,2} {1,3}
    std::vector<OwnedTensor> bufs;
    for (int i = 0; i < 4; ++i) {
      bufs.push_back(OwnedTensor::empty(DType::kF32, {64 + i}));
      fill_test_values(bufs.back(), c.rank(), 600 + i);
    }
    // Issue order differs across ranks between groups; waits in reverse order.
    std::vector<CommHandle> hs;
    if (c.rank() % 2 == 0) {
      hs.push_back(tp->all_reduce_async(bufs[0].view()));
      hs.push_back(dp->all_reduce_async(bufs[1].view()));
    } else {
      hs.push_back(dp->all_reduce_async(bufs[1].view()));
      hs.push_back(tp->all_reduce_async(bufs[0].view()));
    }
    hs.push_back(c.all_reduce_async(bufs[2].view(), ReduceOp::kMax));
    hs.push_back(c.all_reduce_async(bufs[3].view()));
    for (auto it = hs.rbegin(); it != hs.rend(); ++it) it->wait();
    for (auto& b : bufs) out.push_back(bytes_of(b));
    return out;
  });
}

TEST(SocketCommunicator, SplitOrdersByKeyAndSkipsNoColor) {
  expect_same_as_threads(5, [](Communicator& c) {
    std::vector<Bytes> out;
    // Colour by parity, key reversed; rank 4 opts out.
    const int color = c.rank() == 4 ? kNoColor : c.rank() % 2;
    auto g = c.split(color, -c.rank(), "parity");
    if (c.rank() == 4) {
      EXPECT_EQ(g, nullptr);
    } else {
      EXPECT_EQ(g->name(), "parity");
      OwnedTensor t = OwnedTensor::empty(DType::kF64, {3});
      t.view().data<double>()[0] = g->rank();
      t.view().data<double>()[1] = g->size();
      t.view().data<double>()[2] = g->world_ranks()[0];
      OwnedTensor all = OwnedTensor::empty(DType::kF64, {3 * g->size()});
      g->all_gather(all.view(), t.view());
      out.push_back(bytes_of(all));
      auto sub = g->split(0, 0, "again");  // nested split keeps working
      OwnedTensor x = OwnedTensor::empty(DType::kBF16, {9});
      fill_test_values(x, c.rank(), 700);
      sub->all_reduce(x.view());
      out.push_back(bytes_of(x));
    }
    c.barrier();
    return out;
  });
}

TEST(SocketCommunicator, WorldOfOneAndArgumentChecks) {
  run_socket_ranks(1, [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {4});
    fill_test_values(t, 0, 1);
    const Bytes before = bytes_of(t);
    c.all_reduce(t.view());
    EXPECT_TRUE(bytes_of(t) == before);
    c.barrier();
    OwnedTensor o = OwnedTensor::empty(DType::kF32, {3});
    expect_error([&] { c.reduce_scatter(o.view(), t.view()); }, ErrorKind::kInvalidArgument,
                 {"reduce_scatter", "pad"});
    expect_error([&] { c.send(t.view(), 1); }, ErrorKind::kInvalidArgument, {"peer rank 1"});
  });
}

TEST(SocketCommunicator, MismatchedCallsAreReportedNotGuessed) {
  auto errors = run_socket_ranks_collect(2, [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {c.rank() == 0 ? 4 : 5});
    c.all_reduce(t.view());
  }, 20s);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << r;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const Error& e) {
      // The rank that sees the other's frame first reports the mismatch; the other may see
      // the abort it caused instead.
      const std::string m = e.what();
      EXPECT_TRUE(m.find("mismatch") != std::string::npos) << m;
    }
  }
}

TEST(SocketCommunicator, RankThatShutsDownIsNamedAndPeersFailFast) {
  auto errors = run_socket_ranks_collect(3, [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {8});
    c.all_reduce(t.view());
    if (c.rank() == 2) return;  // leaves: its communicator says goodbye
    c.all_reduce(t.view());
  }, 60s);
  EXPECT_FALSE(errors[2]);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << r;
    expect_error([&] { std::rethrow_exception(errors[r]); }, ErrorKind::kTimeout,
                 {"[group 'world']", "all_reduce(sum, fp32, 8 elements) #1", "world rank 2",
                  "shut down"});
  }
}

TEST(SocketCommunicator, HungRankTimesOutNamingItOnEverySurvivor) {
  auto errors = run_socket_ranks_collect(3, [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {8});
    c.barrier();
    if (c.rank() == 1) std::this_thread::sleep_for(1500ms);  // hangs past the deadline
    c.all_reduce(t.view());
  }, 400ms);
  for (int r : {0, 2}) {
    ASSERT_TRUE(errors[r]) << r;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kTimeout) << m;
      EXPECT_NE(m.find("all_reduce(sum, fp32, 8 elements) #1"), std::string::npos) << m;
      EXPECT_NE(m.find("(world ranks [1]) did not arrive"), std::string::npos) << m;
      // Either it timed out itself, or the other survivor's timeout aborted the group first.
      EXPECT_TRUE(m.find("timed out after 0.400 s") != std::string::npos) << m;
    }
  }
  // The hung rank learns that its group was given up on.
  ASSERT_TRUE(errors[1]);
  expect_error([&] { std::rethrow_exception(errors[1]); }, ErrorKind::kTimeout, {"aborted"});
}

// ---- real processes ----------------------------------------------------------------------

// Forks n ranks running body(comm) (after a socket world over a store served by this process);
// returns each child's report ("ok" or the error message) and whether it was killed by a signal.
struct ChildResult {
  std::string report;
  bool signaled = false;
};

std::vector<ChildResult> fork_ranks(int n, std::chrono::milliseconds timeout,
                                    const std::function<void(Communicator&)>& body) {
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 30s});
  const int port = server.port();
  std::vector<pid_t> pids(n);
  std::vector<int> fds(n);
  for (int r = 0; r < n; ++r) {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(p[0]);
      std::string report = "ok";
      try {
        TcpStore store({.host = "127.0.0.1", .port = port, .timeout = 30s});
        auto comm = create_socket_world(store, r, n, {.timeout = timeout, .name = "world", .host = "127.0.0.1"});
        body(*comm);
      } catch (const std::exception& e) {
        report = e.what();
      }
      [[maybe_unused]] ssize_t w = ::write(p[1], report.data(), report.size());
      ::close(p[1]);
      ::_exit(0);  // no destructors of the parent's objects in the child
    }
    ::close(p[1]);
    pids[r] = pid;
    fds[r] = p[0];
  }
  std::vector<ChildResult> out(n);
  for (int r = 0; r < n; ++r) {
    char buf[4096];
    ssize_t got;
    while ((got = ::read(fds[r], buf, sizeof(buf))) > 0) out[r].report.append(buf, got);
    ::close(fds[r]);
    int status = 0;
    ::waitpid(pids[r], &status, 0);
    out[r].signaled = WIFSIGNALED(status);
  }
  return out;
}

TEST(SocketCommunicatorProcesses, KilledProcessMakesPeersFailFastNamingIt) {
  // Timeout 120 s: the survivors must fail because the connection closed, not by timing out.
  auto results = fork_ranks(3, 120s, [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, {1000});
    for (int i = 0; i < 3; ++i) {
      if (c.rank() == 2 && i == 2) ::raise(SIGKILL);
      fill_test_values(t, c.rank(), i);
      c.all_reduce(t.view());
    }
  });
  EXPECT_TRUE(results[2].signaled);
  for (int r = 0; r < 2; ++r) {
    const std::string& m = results[r].report;
    EXPECT_NE(m.find("all_reduce(sum, fp32, 1000 elements) #2"), std::string::npos) << m;
    EXPECT_NE(m.find("world rank 2"), std::string::npos) << m;
    EXPECT_NE(m.find("without a goodbye"), std::string::npos) << m;
    EXPECT_EQ(m.find("timed out"), std::string::npos) << m;
  }
}

TEST(SocketCommunicatorProcesses, ProcessesComputeWhatThreadsCompute) {
  // Three processes reduce; each writes its result into the report as hex, compared with the
  // thread backend on the same inputs.
  auto program = [](Communicator& c) {
    OwnedTensor t = OwnedTensor::empty(DType::kBF16, {257});
    fill_test_values(t, c.rank(), 42);
    c.all_reduce(t.view());
    return bytes_of(t);
  };
  std::vector<Bytes> expected(3);
  run_ranks(3, [&](Communicator& c) { expected[c.rank()] = program(c); });
  auto results = fork_ranks(3, 30s, [&](Communicator& c) {
    const Bytes b = program(c);
    std::string hex;
    char tmp[3];
    for (std::byte x : b) {
      std::snprintf(tmp, sizeof(tmp), "%02x", static_cast<unsigned>(x));
      hex += tmp;
    }
    throw std::runtime_error("result " + hex);  // carried back through the report
  });
  for (int r = 0; r < 3; ++r) {
    std::string hex;
    char tmp[3];
    for (std::byte x : expected[r]) {
      std::snprintf(tmp, sizeof(tmp), "%02x", static_cast<unsigned>(x));
      hex += tmp;
    }
    EXPECT_EQ(results[r].report, "result " + hex) << "rank " << r;
  }
}

}  // namespace
}  // namespace shardlm::dist
