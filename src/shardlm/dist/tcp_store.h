// TcpStore: a small key-value store over TCP for the rendezvous of a multi-process job (the
// NCCL unique id, barriers before NCCL exists). Rank 0 runs the server on MASTER_ADDR:MASTER_PORT
// (a thread owned by its TcpStore); every rank, rank 0 included, is a client of it. Works on
// any machine (no GPU needed); tests run it over loopback.
//
// Operations: set(key, value); get(key) blocks until the key exists; add(key, delta) is an
// atomic counter; check(keys) says which exist. Every blocking call has a deadline
// (options.timeout, or an explicit one): it throws Error(kTimeout) naming the key, the server
// and the time waited. A server that cannot listen, or that a client cannot reach before the
// deadline, throws Error(kIo / kTimeout) with the address and a fix.
//
// Wire format (little-endian host order; both ends are this code): request = u8 op, then
// strings as u32 length + bytes and integers as i64; see tcp_store.cc.
//
// Thread contract: a TcpStore may be shared by threads (calls are serialised); the server
// serves any number of clients. Ownership: destroying the server's TcpStore stops the server.
//
//   TcpStore store({.host = env.master_addr, .port = env.master_port,
//                   .is_server = env.rank == 0, .timeout = std::chrono::seconds(300)});
//   if (env.rank == 0) store.set("nccl/world", id_bytes);
//   std::string id = store.get("nccl/world");
//   store_barrier(store, "init", env.rank, env.world_size);
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace shardlm::dist {

struct TcpStoreOptions {
  std::string host = "127.0.0.1";  // server address (MASTER_ADDR)
  int port = 29500;                // MASTER_PORT; 0 with is_server picks a free port
  bool is_server = false;          // true on exactly one rank (rank 0)
  std::chrono::milliseconds timeout{300'000};  // connect and blocking-call deadline
};

class TcpStore {
 public:
  explicit TcpStore(TcpStoreOptions options);
  ~TcpStore();
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  // The server's port (the chosen one when options.port was 0).
  int port() const { return port_; }
  const TcpStoreOptions& options() const { return options_; }

  void set(const std::string& key, const std::string& value);
  std::string get(const std::string& key) { return get(key, options_.timeout); }
  std::string get(const std::string& key, std::chrono::milliseconds timeout);
  int64_t add(const std::string& key, int64_t delta);
  std::vector<bool> check(const std::vector<std::string>& keys);

 private:
  class Server;
  void connect_client();
  void send_all(const std::string& bytes);
  // Reads exactly n bytes before the deadline or throws (naming `what`).
  std::string recv_exact(size_t n, std::chrono::steady_clock::time_point deadline,
                         const std::string& what);
  std::string address() const;

  TcpStoreOptions options_;
  int port_ = 0;
  std::unique_ptr<Server> server_;
  int fd_ = -1;
  bool broken_ = false;
  std::mutex mu_;
};

// Every rank of [0, world_size) arrives at barrier `name` or, after `timeout`, every rank that
// did throws Error(kTimeout) listing the ranks that did not. Uses keys "barrier/<name>/<rank>".
void store_barrier(TcpStore& store, const std::string& name, int rank, int world_size,
                   std::chrono::milliseconds timeout);
inline void store_barrier(TcpStore& store, const std::string& name, int rank, int world_size) {
  store_barrier(store, name, rank, world_size, store.options().timeout);
}

}  // namespace shardlm::dist
