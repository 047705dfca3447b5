// SocketTransport: the wire under SocketCommunicator — one TCP connection between every pair of
// processes of a job (a full mesh), a reader thread that drains every connection into a mailbox,
// and the liveness of every peer. Not an API: SocketCommunicator is.
//
// Rendezvous (connect()): every rank listens on an ephemeral port of the address it advertises,
// publishes "host:port" under <prefix>addr/<rank> in the TcpStore, connects to every lower rank
// (sending a hello: magic, job nonce, world size, rank) and accepts one connection from every
// higher rank; a final store barrier keeps rank 0's store alive until every rank is connected.
//
// Frames: a fixed 48-byte header (FrameHeader, host byte order: both ends run this code on the
// same architecture) and `nbytes` of payload. kData frames land in the mailbox under (group,
// source world rank, channel, sequence number, phase) until a waiter takes them; so a send never
// waits for the receiver's code to reach its matching receive (the reader thread drains the
// socket), which is what makes batched point-to-point exchanges deadlock-free. kAbort marks a
// group aborted with a reason; kBye says the peer is shutting down on purpose.
//
// Liveness: a peer whose connection closes without a kBye is dead ("crashed or killed"); one
// that said kBye has shut down. Waiters needing a frame from such a peer fail at once instead of
// waiting for their deadline. Sends poll for writability against the caller's deadline, so a
// stopped peer whose socket buffer is full cannot block a sender forever; a send that fails or
// times out mid-frame breaks that connection (the peer is then gone for everyone).
//
// Thread contract: thread-safe (communicators of several groups share one transport; each
// destination has its own send mutex, so frames never interleave). Ownership: shared by the
// communicators built on it; the destructor says goodbye to every peer, waits briefly for their
// goodbyes (so no data in flight is cut by a reset), then stops the reader and closes sockets.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace shardlm::dist {
class TcpStore;
}

namespace shardlm::dist::detail {

using SteadyClock = std::chrono::steady_clock;

enum class FrameType : uint8_t { kData = 1, kAbort = 2, kBye = 3 };

// Every frame starts with this header. `kind`, `dtype`, `numel`, `reduce_op` and `root` describe
// the operation the sender is running, so receivers detect mismatched calls.
struct FrameHeader {
  uint32_t magic = 0;
  uint8_t type = 0;       // FrameType
  uint8_t channel = 0;    // 0: collective, 1: point-to-point
  uint8_t phase = 0;      // step within a collective
  uint8_t kind = 0;       // CommOpKind
  uint64_t group = 0;     // group id (same on every member)
  uint64_t seq = 0;       // operation number in the group (p2p: per sender → receiver pair)
  int64_t numel = 0;      // the operation's element count (per rank, as OpDesc)
  uint8_t dtype = 0;      // DType
  uint8_t reduce_op = 0;  // ReduceOp
  uint16_t reserved = 0;
  int32_t root = 0;
  uint64_t nbytes = 0;    // payload bytes that follow
};
static_assert(sizeof(FrameHeader) == 48);

struct MailKey {
  uint64_t group;
  int src;  // world rank of the sender
  uint8_t channel;
  uint64_t seq;
  uint8_t phase;
  auto operator<=>(const MailKey&) const = default;
};

struct Frame {
  FrameHeader header;
  std::unique_ptr<std::byte[]> payload;  // header.nbytes bytes
};

// Why wait_frames() gave up.
struct WaitFailure {
  enum class Kind { kNone, kAborted, kPeerGone, kTimeout } kind = Kind::kNone;
  int peer = -1;       // kPeerGone: its world rank
  std::string reason;  // kAborted: the group's abort reason; kPeerGone: why the peer is gone
  std::vector<int> missing;  // world ranks whose frames had not arrived
};

class SocketTransport {
 public:
  // Collective over `size` processes: builds the mesh through `store`. `host` is the address
  // peers connect to (empty: the local address of the route to the store's host).
  static std::shared_ptr<SocketTransport> connect(TcpStore& store, const std::string& prefix,
                                                  int rank, int size, const std::string& host,
                                                  std::chrono::milliseconds timeout);
  ~SocketTransport();
  SocketTransport(const SocketTransport&) = delete;
  SocketTransport& operator=(const SocketTransport&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Sends header (+ nbytes of payload) to world rank dst (dst == rank(): straight into the own
  // mailbox). Throws Error(kTimeout) naming the peer when it is gone or does not take the bytes
  // before the deadline.
  void send(int dst, FrameHeader header, const void* payload, SteadyClock::time_point deadline);

  // Waits until a frame exists for every key (they are then moved into `out`, in key order),
  // the group is aborted, a sender of a missing frame is gone, or the deadline passes. Returns
  // false and fills `failure` in the last three cases.
  bool wait_frames(std::span<const MailKey> keys, uint64_t group,
                   SteadyClock::time_point deadline, std::vector<Frame>& out,
                   WaitFailure& failure);
  bool has_frame(const MailKey& key) const;

  // Empty while the peer is alive, else why it is gone.
  std::string peer_gone(int world_rank) const;
  // Empty while the group is usable, else its abort reason.
  std::string abort_reason(uint64_t group) const;
  // Marks the group aborted here (first reason wins) and tells `members` (world ranks) so,
  // best effort: gone peers are skipped and each send gets a short deadline.
  void abort_group(uint64_t group, const std::string& reason, std::span<const int> members);
  // Said in the goodbye to every peer (they report it as why this process left); the first
  // reason wins. Set when the process gives up after an error.
  void set_goodbye_reason(const std::string& reason);

  static constexpr uint32_t kMagic = 0x53484c4d;  // "SHLM"

 private:
  struct Peer;
  SocketTransport(int rank, int size);
  void start_reader();
  void reader_loop();
  // Reads what is available from peer p; false once the connection is finished.
  bool read_peer(int p);
  void deliver(int src, Frame frame);
  void mark_gone(int p, const std::string& reason);
  void say_goodbye();

  int rank_ = 0;
  int size_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;  // index = world rank; own entry unused
  int wake_[2] = {-1, -1};
  std::thread reader_;

  mutable std::mutex mu_;  // guards mailbox_, gone_, aborts_
  std::condition_variable cv_;
  std::map<MailKey, Frame> mailbox_;
  std::vector<std::string> gone_;  // per world rank: empty while alive
  std::vector<char> said_bye_;
  std::map<uint64_t, std::string> aborts_;
  std::string goodbye_reason_;
};

}  // namespace shardlm::dist::detail
