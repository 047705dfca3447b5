#include "shardlm/dist/detail/socket_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iomanip>
#include <random>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/dist/tcp_store.h"

namespace shardlm::dist::detail {
namespace {

using std::chrono::milliseconds;

constexpr uint32_t kProtocolVersion = 1;

// What a connecting rank sends first, so the acceptor knows who it is and that it belongs to
// this job (a stray connection from another job or a port scanner is dropped).
struct Hello {
  uint32_t magic;
  uint32_t version;
  uint64_t nonce;
  int32_t size;
  int32_t rank;
};

std::string errno_str(int err) { return std::strerror(err); }

std::string seconds_str(milliseconds ms) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << ms.count() / 1000.0 << " s";
  return os.str();
}

int left_ms(SteadyClock::time_point deadline) {
  const auto ms =
      std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, 1'000'000'000));
}

sockaddr_storage resolve(const std::string& host, int port, socklen_t& len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || !res) {
    throw Error(ErrorKind::kIo, "socket communicator: cannot resolve host '" + host + "': " +
                                    gai_strerror(rc) + ". Fix: set MASTER_ADDR to a name or "
                                    "address every node can resolve.");
  }
  sockaddr_storage addr{};
  std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return addr;
}

// The local address this host uses to reach `remote` (the routing table's answer, found by
// connecting a UDP socket, which sends nothing).
std::string route_address(const std::string& remote) {
  socklen_t len = 0;
  sockaddr_storage addr = resolve(remote, 9, len);
  const int fd = ::socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  SHARDLM_CHECK(fd >= 0);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0) {
    sockaddr_storage local{};
    socklen_t llen = sizeof(local);
    char buf[NI_MAXHOST];
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) == 0 &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&local), llen, buf, sizeof(buf), nullptr, 0,
                      NI_NUMERICHOST) == 0) {
      out = buf;
    }
  }
  ::close(fd);
  if (out.empty()) {
    throw Error(ErrorKind::kIo, "socket communicator: no route from this host to '" + remote +
                                    "'. Fix: check MASTER_ADDR.");
  }
  return out;
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Writes n bytes, polling for room until the deadline. Returns "" or what went wrong.
std::string write_bytes(int fd, const void* data, size_t n, SteadyClock::time_point deadline) {
  const auto* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < n) {
    const ssize_t w = ::send(fd, p + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd pf{fd, POLLOUT, 0};
      const int ms = left_ms(deadline);
      if (ms == 0) return "the peer did not take the data before the deadline (it hangs)";
      const int rc = ::poll(&pf, 1, ms);
      if (rc < 0 && errno != EINTR) return "poll failed: " + errno_str(errno);
      continue;
    }
    return "send failed: " + errno_str(errno);
  }
  return "";
}

// Reads exactly n bytes before the deadline (rendezvous only). Returns "" or what went wrong.
std::string read_bytes(int fd, void* data, size_t n, SteadyClock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  size_t off = 0;
  while (off < n) {
    pollfd pf{fd, POLLIN, 0};
    const int ms = left_ms(deadline);
    if (ms == 0) return "timed out";
    const int rc = ::poll(&pf, 1, ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    const ssize_t r = ::recv(fd, p + off, n - off, 0);
    if (r == 0) return "connection closed";
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return errno_str(errno);
    }
    off += static_cast<size_t>(r);
  }
  return "";
}

// Why a peer is gone when its connection ended without a kBye frame.
std::string closed_without_goodbye(const std::string& detail) {
  return "its connection closed without a goodbye (" + detail +
         "): the process crashed, was killed or exited without shutting down";
}

std::string store_get(TcpStore& store, const std::string& key, SteadyClock::time_point deadline,
                      const std::string& what_if_missing) {
  try {
    return store.get(key, milliseconds(left_ms(deadline)));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kTimeout) throw;
    throw Error(ErrorKind::kTimeout, "socket communicator rendezvous: " + what_if_missing +
                                         " (" + e.what() + ")");
  }
}

}  // namespace

struct SocketTransport::Peer {
  int fd = -1;
  std::timed_mutex send_mu;
  // Reader-thread state of the frame being received.
  FrameHeader header{};
  size_t header_got = 0;
  Frame frame;
  size_t payload_got = 0;
  bool in_payload = false;
  bool finished = false;  // reader saw EOF / error (guarded by the transport's mu_)
};

SocketTransport::SocketTransport(int rank, int size)
    : rank_(rank), size_(size), gone_(size), said_bye_(size, 0) {
  for (int p = 0; p < size; ++p) peers_.push_back(std::make_unique<Peer>());
}

std::shared_ptr<SocketTransport> SocketTransport::connect(TcpStore& store,
                                                          const std::string& prefix, int rank,
                                                          int size, const std::string& host,
                                                          milliseconds timeout) {
  SHARDLM_REQUIRE(size >= 1 && rank >= 0 && rank < size, ErrorKind::kInvalidArgument,
                  "socket communicator: rank " + std::to_string(rank) + " is outside [0, " +
                      std::to_string(size) + ")");
  const auto deadline = SteadyClock::now() + timeout;
  std::shared_ptr<SocketTransport> t(new SocketTransport(rank, size));

  // 1. The job nonce (rank 0 draws it).
  uint64_t nonce = 0;
  if (rank == 0) {
    nonce = std::random_device{}() * 0x100000001ull ^ static_cast<uint64_t>(
        SteadyClock::now().time_since_epoch().count());
    store.set(prefix + "nonce", std::to_string(nonce));
  } else {
    nonce = std::stoull(store_get(store, prefix + "nonce", deadline,
                                  "rank 0 never published the job nonce: it did not start, or "
                                  "it uses another MASTER_ADDR / MASTER_PORT"));
  }

  // 2. Listen on the advertised address.
  const std::string my_host =
      host.empty() ? route_address(store.options().host) : host;
  socklen_t len = 0;
  sockaddr_storage addr = resolve(my_host, 0, len);
  const int listen_fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  SHARDLM_CHECK(listen_fd >= 0);
  if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(listen_fd, 1024) != 0) {
    const int err = errno;
    ::close(listen_fd);
    throw Error(ErrorKind::kIo, "socket communicator: rank " + std::to_string(rank) +
                                    " cannot listen on " + my_host + ": " + errno_str(err) +
                                    ". Fix: the advertised address must belong to this host.");
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  const int my_port = ntohs(bound.ss_family == AF_INET6
                                ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  store.set(prefix + "addr/" + std::to_string(rank), my_host + ":" + std::to_string(my_port));

  try {
    // 3. Connect to every lower rank.
    for (int j = 0; j < rank; ++j) {
      const std::string a = store_get(
          store, prefix + "addr/" + std::to_string(j), deadline,
          "rank " + std::to_string(j) + " never published its address: it did not start, or it "
          "was given another WORLD_SIZE / MASTER_ADDR / MASTER_PORT");
      const size_t colon = a.rfind(':');
      SHARDLM_CHECK(colon != std::string::npos);
      const std::string peer_host = a.substr(0, colon);
      const int peer_port = std::stoi(a.substr(colon + 1));
      socklen_t plen = 0;
      sockaddr_storage paddr = resolve(peer_host, peer_port, plen);
      std::string last_error;
      int fd = -1;
      for (;;) {
        fd = ::socket(paddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        SHARDLM_CHECK(fd >= 0);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&paddr), plen) == 0) break;
        last_error = errno_str(errno);
        ::close(fd);
        fd = -1;
        if (SteadyClock::now() >= deadline) break;
        std::this_thread::sleep_for(milliseconds(20));
      }
      if (fd < 0) {
        throw Error(ErrorKind::kTimeout,
                    "socket communicator rendezvous: rank " + std::to_string(rank) +
                        " could not connect to rank " + std::to_string(j) + " at " + a +
                        " within " + seconds_str(timeout) + " (" + last_error +
                        "). Fix: a firewall may block the ports, or that rank exited.");
      }
      set_nodelay(fd);
      const Hello hello{kMagic, kProtocolVersion, nonce, size, rank};
      const std::string err = write_bytes(fd, &hello, sizeof(hello), deadline);
      if (!err.empty()) {
        ::close(fd);
        throw Error(ErrorKind::kTimeout, "socket communicator rendezvous: rank " +
                                             std::to_string(rank) + " -> rank " +
                                             std::to_string(j) + ": " + err);
      }
      t->peers_[j]->fd = fd;
    }

    // 4. Accept one connection from every higher rank.
    int expected = size - 1 - rank;
    while (expected > 0) {
      pollfd pf{listen_fd, POLLIN, 0};
      const int ms = left_ms(deadline);
      const int rc = ms > 0 ? ::poll(&pf, 1, ms) : 0;
      if (rc < 0 && errno == EINTR) continue;
      if (rc == 0) {
        std::ostringstream os;
        os << "socket communicator rendezvous: rank " << rank << " waited " << seconds_str(timeout)
           << " for ranks [";
        bool first = true;
        for (int j = rank + 1; j < size; ++j) {
          if (t->peers_[j]->fd < 0) {
            os << (first ? "" : ", ") << j;
            first = false;
          }
        }
        os << "] to connect. Fix: check that every rank started with the same WORLD_SIZE / "
              "MASTER_ADDR / MASTER_PORT and look at the missing ranks' logs.";
        throw Error(ErrorKind::kTimeout, os.str());
      }
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      Hello hello{};
      const auto hello_deadline = std::min(deadline, SteadyClock::now() + std::chrono::seconds(5));
      if (!read_bytes(fd, &hello, sizeof(hello), hello_deadline).empty() ||
          hello.magic != kMagic || hello.version != kProtocolVersion || hello.nonce != nonce ||
          hello.size != size || hello.rank <= rank || hello.rank >= size ||
          t->peers_[hello.rank]->fd >= 0) {
        ::close(fd);  // not one of ours (another job, a stale connection): ignore it
        continue;
      }
      set_nodelay(fd);
      t->peers_[hello.rank]->fd = fd;
      --expected;
    }
  } catch (...) {
    ::close(listen_fd);
    throw;
  }
  ::close(listen_fd);

  // 5. Keep rank 0's store alive until everyone is connected; then start reading.
  store_barrier(store, prefix + "ready", rank, size,
                milliseconds(std::max(left_ms(deadline), 1)));
  t->start_reader();
  return t;
}

void SocketTransport::start_reader() {
  SHARDLM_CHECK(::pipe2(wake_, O_CLOEXEC) == 0);
  reader_ = std::thread([this] { reader_loop(); });
}

SocketTransport::~SocketTransport() {
  say_goodbye();
  if (reader_.joinable()) {
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_[1], &c, 1);
    reader_.join();
  }
  for (auto& p : peers_) {
    if (p->fd >= 0) ::close(p->fd);
  }
  if (wake_[0] >= 0) ::close(wake_[0]);
  if (wake_[1] >= 0) ::close(wake_[1]);
}

void SocketTransport::say_goodbye() {
  if (!reader_.joinable()) return;
  FrameHeader h{};
  h.type = static_cast<uint8_t>(FrameType::kBye);
  const std::string reason = [&] {
    std::lock_guard lk(mu_);
    return goodbye_reason_;
  }();
  h.nbytes = reason.size();
  for (int p = 0; p < size_; ++p) {
    if (p == rank_ || !peer_gone(p).empty()) continue;
    try {
      send(p, h, reason.data(), SteadyClock::now() + std::chrono::seconds(1));
    } catch (const Error&) {
      // the peer is gone already; nothing to say
    }
  }
  for (int p = 0; p < size_; ++p) {
    if (p != rank_ && peers_[p]->fd >= 0) ::shutdown(peers_[p]->fd, SHUT_WR);
  }
  // Wait (briefly) until every peer closed its side too, so nothing it sent is cut off.
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, std::chrono::seconds(1), [&] {
    for (int p = 0; p < size_; ++p) {
      if (p != rank_ && !peers_[p]->finished) return false;
    }
    return true;
  });
}

void SocketTransport::reader_loop() {
  for (;;) {
    std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}};
    std::vector<int> who = {-1};
    {
      std::lock_guard lk(mu_);
      for (int p = 0; p < size_; ++p) {
        if (p != rank_ && peers_[p]->fd >= 0 && !peers_[p]->finished) {
          fds.push_back({peers_[p]->fd, POLLIN, 0});
          who.push_back(p);
        }
      }
    }
    const int rc = ::poll(fds.data(), fds.size(), -1);
    if (rc < 0 && errno != EINTR) return;
    if (fds[0].revents) return;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      const int p = who[i];
      if (!read_peer(p)) {
        std::lock_guard lk(mu_);
        peers_[p]->finished = true;
        cv_.notify_all();
      }
    }
  }
}

bool SocketTransport::read_peer(int p) {
  Peer& peer = *peers_[p];
  for (;;) {
    char* dst;
    size_t want;
    if (!peer.in_payload) {
      dst = reinterpret_cast<char*>(&peer.header) + peer.header_got;
      want = sizeof(FrameHeader) - peer.header_got;
    } else {
      dst = reinterpret_cast<char*>(peer.frame.payload.get()) + peer.payload_got;
      want = peer.frame.header.nbytes - peer.payload_got;
    }
    const ssize_t n = ::recv(peer.fd, dst, want, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) {
      const bool bye = [&] {
        std::lock_guard lk(mu_);
        return said_bye_[p] != 0;
      }();
      if (!bye) mark_gone(p, closed_without_goodbye(n == 0 ? "end of stream" : errno_str(errno)));
      return false;
    }
    if (!peer.in_payload) {
      peer.header_got += static_cast<size_t>(n);
      if (peer.header_got < sizeof(FrameHeader)) continue;
      if (peer.header.magic != kMagic) {
        mark_gone(p, "it sent a malformed frame (protocol error)");
        ::shutdown(peer.fd, SHUT_RDWR);
        return false;
      }
      peer.frame.header = peer.header;
      peer.frame.payload.reset(peer.header.nbytes ? new std::byte[peer.header.nbytes] : nullptr);
      peer.payload_got = 0;
      peer.header_got = 0;
      peer.in_payload = true;
    } else {
      peer.payload_got += static_cast<size_t>(n);
    }
    if (peer.in_payload && peer.payload_got == peer.frame.header.nbytes) {
      peer.in_payload = false;
      deliver(p, std::move(peer.frame));
      peer.frame = Frame{};
    }
  }
}

void SocketTransport::deliver(int src, Frame frame) {
  std::lock_guard lk(mu_);
  const FrameHeader& h = frame.header;
  switch (static_cast<FrameType>(h.type)) {
    case FrameType::kData: {
      const MailKey key{h.group, src, h.channel, h.seq, h.phase};
      mailbox_[key] = std::move(frame);
      break;
    }
    case FrameType::kAbort: {
      std::string reason(reinterpret_cast<const char*>(frame.payload.get()), h.nbytes);
      aborts_.emplace(h.group, std::move(reason));  // first reason wins
      break;
    }
    case FrameType::kBye: {
      said_bye_[src] = 1;
      if (gone_[src].empty()) {
        gone_[src] = h.nbytes == 0
                         ? "it shut down its communicator: the process finished or is exiting"
                         : "it shut down its communicator after an error: " +
                               std::string(reinterpret_cast<const char*>(frame.payload.get()),
                                           h.nbytes);
      }
      break;
    }
  }
  cv_.notify_all();
}

void SocketTransport::mark_gone(int p, const std::string& reason) {
  std::lock_guard lk(mu_);
  if (gone_[p].empty()) gone_[p] = reason;
  cv_.notify_all();
}

void SocketTransport::send(int dst, FrameHeader header, const void* payload,
                           SteadyClock::time_point deadline) {
  SHARDLM_CHECK(dst >= 0 && dst < size_);
  header.magic = kMagic;
  if (dst == rank_) {
    Frame f;
    f.header = header;
    if (header.nbytes) {
      f.payload.reset(new std::byte[header.nbytes]);
      std::memcpy(f.payload.get(), payload, header.nbytes);
    }
    deliver(rank_, std::move(f));
    return;
  }
  const std::string gone = peer_gone(dst);
  if (!gone.empty()) {
    throw Error(ErrorKind::kTimeout,
                "cannot send to world rank " + std::to_string(dst) + ": " + gone);
  }
  Peer& peer = *peers_[dst];
  std::unique_lock lk(peer.send_mu, std::defer_lock);
  if (!lk.try_lock_until(deadline)) {
    throw Error(ErrorKind::kTimeout, "cannot send to world rank " + std::to_string(dst) +
                                         ": its connection stayed busy until the deadline (the "
                                         "peer does not read: it hangs or is stopped)");
  }
  std::string err = write_bytes(peer.fd, &header, sizeof(header), deadline);
  if (err.empty() && header.nbytes) err = write_bytes(peer.fd, payload, header.nbytes, deadline);
  if (!err.empty()) {
    // A frame cut in the middle cannot be resumed: the connection is finished.
    ::shutdown(peer.fd, SHUT_RDWR);
    mark_gone(dst, err.find("deadline") != std::string::npos ? err : closed_without_goodbye(err));
    throw Error(ErrorKind::kTimeout,
                "cannot send to world rank " + std::to_string(dst) + ": " + peer_gone(dst));
  }
}

bool SocketTransport::wait_frames(std::span<const MailKey> keys, uint64_t group,
                                  SteadyClock::time_point deadline, std::vector<Frame>& out,
                                  WaitFailure& failure) {
  std::unique_lock lk(mu_);
  for (;;) {
    std::vector<int> missing;
    for (const MailKey& k : keys) {
      if (!mailbox_.count(k) &&
          std::find(missing.begin(), missing.end(), k.src) == missing.end()) {
        missing.push_back(k.src);
      }
    }
    if (missing.empty()) {
      out.clear();
      for (const MailKey& k : keys) {
        auto it = mailbox_.find(k);
        out.push_back(std::move(it->second));
        mailbox_.erase(it);
      }
      return true;
    }
    std::sort(missing.begin(), missing.end());
    failure.missing = missing;
    if (auto it = aborts_.find(group); it != aborts_.end()) {
      failure.kind = WaitFailure::Kind::kAborted;
      failure.reason = it->second;
      return false;
    }
    for (int m : missing) {
      if (!gone_[m].empty()) {
        failure.kind = WaitFailure::Kind::kPeerGone;
        failure.peer = m;
        failure.reason = gone_[m];
        return false;
      }
    }
    if (SteadyClock::now() >= deadline) {
      failure.kind = WaitFailure::Kind::kTimeout;
      return false;
    }
    cv_.wait_until(lk, deadline);
  }
}

bool SocketTransport::has_frame(const MailKey& key) const {
  std::lock_guard lk(mu_);
  return mailbox_.count(key) != 0;
}

std::string SocketTransport::peer_gone(int world_rank) const {
  std::lock_guard lk(mu_);
  return gone_[world_rank];
}

std::string SocketTransport::abort_reason(uint64_t group) const {
  std::lock_guard lk(mu_);
  auto it = aborts_.find(group);
  return it == aborts_.end() ? std::string() : it->second;
}

void SocketTransport::set_goodbye_reason(const std::string& reason) {
  std::lock_guard lk(mu_);
  if (goodbye_reason_.empty()) goodbye_reason_ = reason;
}

void SocketTransport::abort_group(uint64_t group, const std::string& reason,
                                  std::span<const int> members) {
  {
    std::lock_guard lk(mu_);
    aborts_.emplace(group, reason);
    cv_.notify_all();
  }
  FrameHeader h{};
  h.type = static_cast<uint8_t>(FrameType::kAbort);
  h.group = group;
  h.nbytes = reason.size();
  for (int m : members) {
    if (m == rank_ || !peer_gone(m).empty()) continue;
    try {
      send(m, h, reason.data(), SteadyClock::now() + std::chrono::seconds(2));
    } catch (const Error&) {
      // best effort: that peer is gone or stuck, and fails on its own
    }
  }
}

}  // namespace shardlm::dist::detail
