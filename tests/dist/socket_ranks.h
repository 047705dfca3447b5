// Test helper for dist/: N ranks as threads of this process, each with its OWN socket world (its
// own TcpStore client, listening socket and connections), so the whole cross-process protocol
// of SocketCommunicator runs over loopback without forking.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "rank_threads.h"
#include "shardlm/dist/socket_communicator.h"
#include "shardlm/dist/tcp_store.h"

namespace shardlm::dist::testing {

// Runs fn on n threads, each with its own socket world; returns every rank's error (or null).
inline std::vector<std::exception_ptr> run_socket_ranks_collect(
    int n, const std::function<void(Communicator&)>& fn, std::chrono::milliseconds timeout) {
  TcpStore server({.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 20s});
  return run_threads_collect(n, [&](int r) {
    std::optional<TcpStore> client;
    TcpStore* store = &server;
    if (r != 0) {
      client.emplace(TcpStoreOptions{.host = "127.0.0.1", .port = server.port(), .timeout = 20s});
      store = &*client;
    }
    std::unique_ptr<Communicator> comm = create_socket_world(
        *store, r, n, {.timeout = timeout, .name = "world", .host = "127.0.0.1"});
    fn(*comm);
  });
}

inline void run_socket_ranks(int n, const std::function<void(Communicator&)>& fn,
                             std::chrono::milliseconds timeout = 20s) {
  rethrow_first_error(run_socket_ranks_collect(n, fn, timeout));
}

}  // namespace shardlm::dist::testing
