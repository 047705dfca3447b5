#include "shardlm/dist/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <iomanip>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::dist {
namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kCheck = 4 };
enum Status : uint8_t { kOk = 0, kTimedOut = 1 };

void put_u8(std::string& b, uint8_t v) { b.push_back(static_cast<char>(v)); }
void put_u32(std::string& b, uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); }
void put_i64(std::string& b, int64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& b, const std::string& s) {
  put_u32(b, static_cast<uint32_t>(s.size()));
  b += s;
}

// Reads from a byte buffer; every get fails (returns false) when the bytes are not there yet.
struct Reader {
  const std::string& b;
  size_t pos = 0;
  bool u8(uint8_t& v) { return raw(&v, 1); }
  bool u32(uint32_t& v) { return raw(&v, 4); }
  bool i64(int64_t& v) { return raw(&v, 8); }
  bool str(std::string& s) {
    uint32_t n = 0;
    if (!u32(n) || b.size() - pos < n) return false;
    s.assign(b, pos, n);
    pos += n;
    return true;
  }
  bool raw(void* p, size_t n) {
    if (b.size() - pos < n) return false;
    std::memcpy(p, b.data() + pos, n);
    pos += n;
    return true;
  }
};

std::string errno_str(int err) { return std::strerror(err); }

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << ms.count() / 1000.0 << " s";
  return os.str();
}

void write_all(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // peer gone: its reads fail; the server drops it on the next poll
    off += static_cast<size_t>(n);
  }
}

// Resolves host:port to an IPv4/IPv6 socket address (first match).
sockaddr_storage resolve(const std::string& host, int port, socklen_t& len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || !res) {
    throw Error(ErrorKind::kIo, "rendezvous store: cannot resolve host '" + host + "': " +
                                    gai_strerror(rc) + ". Fix: set MASTER_ADDR to rank 0's "
                                    "host name or IP address.");
  }
  sockaddr_storage addr{};
  std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return addr;
}

}  // namespace

// ---- server: one thread, poll() over the listening socket, the clients and a wake pipe -----
class TcpStore::Server {
 public:
  Server(const std::string& host, int port) {
    socklen_t len = 0;
    sockaddr_storage addr = resolve(host, port, len);
    listen_fd_ = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SHARDLM_CHECK(listen_fd_ >= 0);
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(listen_fd_, 1024) != 0) {
      const int err = errno;
      ::close(listen_fd_);
      throw Error(ErrorKind::kIo, "rendezvous store: cannot listen on " + host + ":" +
                                      std::to_string(port) + ": " + errno_str(err) +
                                      ". Fix: choose a free MASTER_PORT, and set MASTER_ADDR "
                                      "to an address of this host (rank 0).");
    }
    sockaddr_storage bound{};
    socklen_t blen = sizeof(bound);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &blen);
    port_ = ntohs(bound.ss_family == AF_INET6
                      ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                      : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    SHARDLM_CHECK(::pipe2(wake_, O_CLOEXEC) == 0);
    thread_ = std::thread([this] { loop(); });
  }

  ~Server() {
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_[1], &c, 1);
    thread_.join();
    for (auto& [fd, client] : clients_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  int port() const { return port_; }

 private:
  struct Pending {
    int fd;
    std::string key;
    Clock::time_point deadline;
  };

  void loop() {
    for (;;) {
      std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      for (auto& [fd, buf] : clients_) fds.push_back({fd, POLLIN, 0});
      int wait_ms = -1;
      const auto now = Clock::now();
      for (const auto& p : pending_) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(p.deadline - now);
        const int m = static_cast<int>(std::max<int64_t>(0, ms.count()) + 1);
        wait_ms = wait_ms < 0 ? m : std::min(wait_ms, m);
      }
      const int rc = ::poll(fds.data(), fds.size(), wait_ms);
      if (rc < 0 && errno != EINTR) return;
      if (fds[0].revents) return;  // stop
      if (fds[1].revents & POLLIN) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          const int one = 1;
          ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          clients_[fd] = "";
        }
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents) read_client(fds[i].fd);
      }
      expire_pending();
    }
  }

  void read_client(int fd) {
    char buf[65536];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      drop(fd);
      return;
    }
    std::string& in = clients_[fd];
    in.append(buf, static_cast<size_t>(n));
    for (;;) {
      Reader r{in};
      if (!handle(fd, r)) break;  // incomplete request: wait for more bytes
      in.erase(0, r.pos);
    }
  }

  // Handles one complete request at the front of r; false when it is incomplete.
  bool handle(int fd, Reader& r) {
    uint8_t op = 0;
    if (!r.u8(op)) return false;
    std::string key, value, reply;
    int64_t num = 0;
    switch (op) {
      case kSet:
        if (!r.str(key) || !r.str(value)) return false;
        data_[key] = value;
        put_u8(reply, kOk);
        write_all(fd, reply);
        wake_waiters(key);
        return true;
      case kGet:
        if (!r.str(key) || !r.i64(num)) return false;
        if (auto it = data_.find(key); it != data_.end()) {
          put_u8(reply, kOk);
          put_str(reply, it->second);
          write_all(fd, reply);
        } else {
          pending_.push_back({fd, key, Clock::now() + std::chrono::milliseconds(num)});
        }
        return true;
      case kAdd: {
        if (!r.str(key) || !r.i64(num)) return false;
        int64_t current = 0;
        if (auto it = data_.find(key); it != data_.end()) {
          // A value written by set() that is not a number counts as 0 (never throw here).
          const std::string& v = it->second;
          std::from_chars(v.data(), v.data() + v.size(), current);
        }
        current += num;
        data_[key] = std::to_string(current);
        put_i64(reply, current);
        write_all(fd, reply);
        wake_waiters(key);
        return true;
      }
      case kCheck: {
        uint32_t n = 0;
        if (!r.u32(n)) return false;
        std::string flags;
        for (uint32_t i = 0; i < n; ++i) {
          if (!r.str(key)) return false;
          flags.push_back(data_.count(key) ? 1 : 0);
        }
        put_u32(reply, n);
        reply += flags;
        write_all(fd, reply);
        return true;
      }
      default:
        drop(fd);  // not our protocol: forget the client
        return false;
    }
  }

  void wake_waiters(const std::string& key) {
    std::erase_if(pending_, [&](const Pending& p) {
      if (p.key != key) return false;
      std::string reply;
      put_u8(reply, kOk);
      put_str(reply, data_[key]);
      write_all(p.fd, reply);
      return true;
    });
  }

  void expire_pending() {
    const auto now = Clock::now();
    std::erase_if(pending_, [&](const Pending& p) {
      if (p.deadline > now) return false;
      std::string reply;
      put_u8(reply, kTimedOut);
      write_all(p.fd, reply);
      return true;
    });
  }

  void drop(int fd) {
    std::erase_if(pending_, [fd](const Pending& p) { return p.fd == fd; });
    clients_.erase(fd);
    ::close(fd);
  }

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
  std::map<int, std::string> clients_;  // fd -> unparsed input
  std::map<std::string, std::string> data_;
  std::vector<Pending> pending_;
};

// ---- client --------------------------------------------------------------------------------
TcpStore::TcpStore(TcpStoreOptions options) : options_(std::move(options)) {
  port_ = options_.port;
  if (options_.is_server) {
    server_ = std::make_unique<Server>(options_.host, options_.port);
    port_ = server_->port();
  }
  connect_client();
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
  server_.reset();
}

std::string TcpStore::address() const { return options_.host + ":" + std::to_string(port_); }

void TcpStore::connect_client() {
  const auto deadline = Clock::now() + options_.timeout;
  std::string last_error = "no attempt";
  for (;;) {
    socklen_t len = 0;
    sockaddr_storage addr = resolve(options_.host, port_, len);
    const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SHARDLM_CHECK(fd >= 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      fd_ = fd;
      return;
    }
    last_error = errno_str(errno);
    ::close(fd);
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw Error(ErrorKind::kTimeout,
              "rendezvous store: could not connect to " + address() + " within " +
                  seconds_str(options_.timeout) + " (last error: " + last_error +
                  "). Fix: check that MASTER_ADDR and MASTER_PORT name rank 0's host and port "
                  "in every process and that rank 0 has started.");
}

void TcpStore::send_all(const std::string& bytes) {
  SHARDLM_REQUIRE(!broken_, ErrorKind::kIo,
                  "rendezvous store " + address() + ": the connection failed earlier");
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      broken_ = true;
      throw Error(ErrorKind::kIo, "rendezvous store " + address() + ": send failed (" +
                                      errno_str(errno) + "); rank 0 (the server) may have exited");
    }
    off += static_cast<size_t>(n);
  }
}

std::string TcpStore::recv_exact(size_t n, Clock::time_point deadline, const std::string& what) {
  std::string out;
  while (out.size() < n) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd p{fd_, POLLIN, 0};
    const int rc = left > 0 ? ::poll(&p, 1, static_cast<int>(left)) : 0;
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) {
      broken_ = true;
      throw Error(ErrorKind::kTimeout, "rendezvous store " + address() + ": no answer to " +
                                           what + " before the deadline; the server (rank 0) "
                                           "hangs or the network is down");
    }
    char buf[4096];
    const ssize_t got = ::recv(fd_, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (got <= 0) {
      broken_ = true;
      throw Error(ErrorKind::kIo, "rendezvous store " + address() + ": connection closed while "
                                  "waiting for " + what + "; rank 0 (the server) has exited");
    }
    out.append(buf, static_cast<size_t>(got));
  }
  return out;
}

void TcpStore::set(const std::string& key, const std::string& value) {
  std::lock_guard lk(mu_);
  std::string req;
  put_u8(req, kSet);
  put_str(req, key);
  put_str(req, value);
  send_all(req);
  recv_exact(1, Clock::now() + options_.timeout, "set('" + key + "')");
}

std::string TcpStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  std::lock_guard lk(mu_);
  std::string req;
  put_u8(req, kGet);
  put_str(req, key);
  put_i64(req, timeout.count());
  send_all(req);
  // The server answers at its deadline; allow a little more before blaming the server.
  const auto deadline = Clock::now() + timeout + std::chrono::seconds(2);
  const std::string what = "get('" + key + "')";
  const std::string status = recv_exact(1, deadline, what);
  if (static_cast<uint8_t>(status[0]) == kTimedOut) {
    throw Error(ErrorKind::kTimeout, "rendezvous store " + address() + ": key '" + key +
                                         "' was not set within " + seconds_str(timeout) +
                                         "; the rank that should set it has not arrived");
  }
  const std::string len = recv_exact(4, deadline, what);
  uint32_t n = 0;
  std::memcpy(&n, len.data(), 4);
  return recv_exact(n, deadline, what);
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  std::lock_guard lk(mu_);
  std::string req;
  put_u8(req, kAdd);
  put_str(req, key);
  put_i64(req, delta);
  send_all(req);
  const std::string v = recv_exact(8, Clock::now() + options_.timeout, "add('" + key + "')");
  int64_t out = 0;
  std::memcpy(&out, v.data(), 8);
  return out;
}

std::vector<bool> TcpStore::check(const std::vector<std::string>& keys) {
  std::lock_guard lk(mu_);
  std::string req;
  put_u8(req, kCheck);
  put_u32(req, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) put_str(req, k);
  send_all(req);
  const auto deadline = Clock::now() + options_.timeout;
  recv_exact(4, deadline, "check");
  const std::string flags = recv_exact(keys.size(), deadline, "check");
  std::vector<bool> out(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) out[i] = flags[i] != 0;
  return out;
}

void store_barrier(TcpStore& store, const std::string& name, int rank, int world_size,
                   std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto key = [&](int r) { return "barrier/" + name + "/" + std::to_string(r); };
  store.set(key(rank), "1");
  for (int r = 0; r < world_size; ++r) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                            Clock::now());
    try {
      store.get(key(r), std::max(left, std::chrono::milliseconds(0)));
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kTimeout) throw;
      std::vector<std::string> keys;
      for (int k = 0; k < world_size; ++k) keys.push_back(key(k));
      const std::vector<bool> present = store.check(keys);
      std::ostringstream os;
      os << "rendezvous barrier '" << name << "' at rank " << rank << " of " << world_size
         << " timed out after " << seconds_str(timeout) << ": ranks [";
      bool first = true;
      for (int k = 0; k < world_size; ++k) {
        if (!present[k]) {
          os << (first ? "" : ", ") << k;
          first = false;
        }
      }
      os << "] did not arrive. Fix: check that every rank was started with the same "
            "WORLD_SIZE / MASTER_ADDR / MASTER_PORT and look at the missing ranks' logs.";
      throw Error(ErrorKind::kTimeout, os.str());
    }
  }
}

}  // namespace shardlm::dist
