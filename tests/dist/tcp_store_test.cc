// TcpStore over loopback: rendezvous of N threads, blocking get, counters, barrier, and every
// failure (missing key, missing peer, no server, port in use, server exit) within its timeout.
#include "shardlm/dist/tcp_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using namespace std::chrono_literals;
using testing::expect_error;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TcpStoreOptions client_of(const TcpStore& server, std::chrono::milliseconds timeout = 5s) {
  return {.host = "127.0.0.1", .port = server.port(), .is_server = false, .timeout = timeout};
}

TEST(TcpStore, RendezvousOfNThreadsOverLoopback) {
  const int n = 6;
  std::promise<int> port_promise;
  std::shared_future<int> port = port_promise.get_future().share();
  std::vector<std::string> seen(n);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  std::unique_ptr<TcpStore> server;  // outlives every rank's thread, as rank 0's store does
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<TcpStore> own;
        TcpStore* store = nullptr;
        if (r == 0) {
          server = std::make_unique<TcpStore>(
              TcpStoreOptions{.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 5s});
          store = server.get();
          port_promise.set_value(store->port());
        } else {
          own = std::make_unique<TcpStore>(
              TcpStoreOptions{.host = "127.0.0.1", .port = port.get(), .timeout = 5s});
          store = own.get();
        }
        store->set("id/" + std::to_string(r), std::string("value\0of ", 9) + std::to_string(r));
        EXPECT_LE(store->add("count", 1), n);
        store_barrier(*store, "all-set", r, n);
        for (int k = 0; k < n; ++k) seen[r] += store->get("id/" + std::to_string(k)) + ";";
        EXPECT_EQ(store->add("count", 0), n);
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  std::string expected;
  for (int k = 0; k < n; ++k) expected += std::string("value\0of ", 9) + std::to_string(k) + ";";
  for (int r = 0; r < n; ++r) EXPECT_EQ(seen[r], expected) << "rank " << r;
}

TEST(TcpStore, GetBlocksUntilAnotherClientSets) {
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 5s});
  std::thread writer([&] {
    TcpStore client(client_of(server));
    std::this_thread::sleep_for(50ms);
    client.set("late", "here");
  });
  EXPECT_EQ(server.get("late"), "here");
  writer.join();
  EXPECT_EQ(server.check({"late", "never"}), (std::vector<bool>{true, false}));
}

TEST(TcpStore, MissingKeyTimesOutAndTheConnectionStaysUsable) {
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 5s});
  const auto t0 = Clock::now();
  expect_error([&] { server.get("nobody", 100ms); }, ErrorKind::kTimeout,
               {"key 'nobody' was not set within 0.100 s", "127.0.0.1:"});
  EXPECT_LT(seconds_since(t0), 1.5);
  server.set("k", "v");
  EXPECT_EQ(server.get("k", 100ms), "v");
}

TEST(TcpStore, BarrierWithAMissingPeerNamesIt) {
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 5s});
  const int n = 4;
  std::vector<std::thread> threads;
  std::vector<std::string> errors(n);
  const auto t0 = Clock::now();
  for (int r = 0; r < n - 1; ++r) {  // rank 3 never comes
    threads.emplace_back([&, r] {
      TcpStore client(client_of(server));
      try {
        store_barrier(client, "init", r, n, 200ms);
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::kTimeout) errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(seconds_since(t0), 3.0);
  for (int r = 0; r < n - 1; ++r) {
    EXPECT_NE(errors[r].find("barrier 'init' at rank " + std::to_string(r) + " of 4"),
              std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("ranks [3] did not arrive"), std::string::npos) << errors[r];
  }
}

TEST(TcpStore, NoServerTimesOutWithTheAddressAndAFix) {
  int port = 0;
  {
    TcpStore gone({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 1s});
    port = gone.port();
  }
  const auto t0 = Clock::now();
  expect_error([&] { TcpStore({.host = "127.0.0.1", .port = port, .timeout = 150ms}); },
               ErrorKind::kTimeout,
               {"could not connect to 127.0.0.1:" + std::to_string(port), "0.150 s",
                "MASTER_ADDR and MASTER_PORT"});
  EXPECT_LT(seconds_since(t0), 2.0);
}

TEST(TcpStore, PortInUseIsAClearError) {
  TcpStore first({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 1s});
  expect_error(
      [&] {
        TcpStore({.host = "127.0.0.1", .port = first.port(), .is_server = true, .timeout = 1s});
      },
      ErrorKind::kIo, {"cannot listen on 127.0.0.1:" + std::to_string(first.port()), "MASTER_PORT"});
}

TEST(TcpStore, ServerExitWakesWaitingClients) {
  auto server = std::make_unique<TcpStore>(
      TcpStoreOptions{.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 5s});
  TcpStore client(client_of(*server, 10s));
  std::thread stopper([&] {
    std::this_thread::sleep_for(50ms);
    server.reset();
  });
  const auto t0 = Clock::now();
  expect_error([&] { client.get("never"); }, ErrorKind::kIo, {"connection closed", "exited"});
  stopper.join();
  EXPECT_LT(seconds_since(t0), 3.0);
  expect_error([&] { client.set("a", "b"); }, ErrorKind::kIo, {"failed earlier"});
}

}  // namespace
}  // namespace shardlm::dist
