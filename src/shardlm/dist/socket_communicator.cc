#include "shardlm/dist/socket_communicator.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <iomanip>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/dist/detail/host_reduce.h"
#include "shardlm/dist/detail/socket_transport.h"
#include "shardlm/dist/tcp_store.h"

namespace shardlm::dist {
namespace {

using detail::Frame;
using detail::FrameHeader;
using detail::MailKey;
using detail::SocketTransport;
using detail::WaitFailure;
using Clock = std::chrono::steady_clock;

constexpr uint8_t kCollectiveChannel = 0;
constexpr uint8_t kP2PChannel = 1;

// What the caller asked for; travels in every frame so members detect mismatched calls.
struct OpDesc {
  CommOpKind kind = CommOpKind::kBarrier;
  DType dtype = DType::kF32;
  int64_t numel = 0;  // per rank (all_gather: input; reduce_scatter: output)
  ReduceOp op = ReduceOp::kSum;
  int root = 0;

  static OpDesc from(const FrameHeader& h) {
    return {static_cast<CommOpKind>(h.kind), static_cast<DType>(h.dtype), h.numel,
            static_cast<ReduceOp>(h.reduce_op), h.root};
  }
  bool operator==(const OpDesc& o) const {
    return kind == o.kind && dtype == o.dtype && numel == o.numel && op == o.op && root == o.root;
  }
  std::string to_string() const {
    std::ostringstream os;
    os << comm_op_name(kind);
    switch (kind) {
      case CommOpKind::kBarrier: case CommOpKind::kSplit: return os.str();
      case CommOpKind::kAllReduce: case CommOpKind::kReduceScatter:
        os << "(" << reduce_op_name(op) << ", ";
        break;
      case CommOpKind::kBroadcast: os << "(root " << root << ", "; break;
      default: os << "("; break;
    }
    os << dtype_name(dtype) << ", " << numel << " elements)";
    return os.str();
  }
};

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << ms.count() / 1000.0 << " s";
  return os.str();
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

// Completion of one operation run by the worker.
struct OpState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;

  void finish(std::exception_ptr e) {
    std::lock_guard lk(mu);
    error = std::move(e);
    done = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return done; });
    if (error) std::rethrow_exception(error);
  }
  bool completed() {
    std::lock_guard lk(mu);
    return done;
  }
};

class StateWork final : public CommWork {
 public:
  explicit StateWork(std::shared_ptr<OpState> s) : s_(std::move(s)) {}
  void wait() override { s_->wait(); }
  bool is_completed() override { return s_->completed(); }

 private:
  std::shared_ptr<OpState> s_;
};

class BatchWork final : public CommWork {
 public:
  explicit BatchWork(std::vector<std::shared_ptr<CommWork>> parts) : parts_(std::move(parts)) {}
  void wait() override {
    for (auto& p : parts_) p->wait();
  }
  bool is_completed() override {
    return std::all_of(parts_.begin(), parts_.end(), [](auto& p) { return p->is_completed(); });
  }

 private:
  std::vector<std::shared_ptr<CommWork>> parts_;
};

// Runs the group's collectives one after another, in issue order.
class OpWorker {
 public:
  OpWorker() : thread_([this] { loop(); }) {}
  ~OpWorker() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void post(std::function<void()> task) {
    {
      std::lock_guard lk(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_all();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stop_ and drained
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();  // tasks catch their own errors
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;
};

class SocketCommunicator final : public Communicator {
 public:
  SocketCommunicator(std::shared_ptr<SocketTransport> transport, uint64_t gid, std::string name,
                     std::vector<int> world_ranks, int rank, std::chrono::milliseconds timeout)
      : transport_(std::move(transport)), gid_(gid), name_(std::move(name)),
        world_ranks_(std::move(world_ranks)), rank_(rank), timeout_(timeout),
        send_seq_(world_ranks_.size(), 0), recv_seq_(world_ranks_.size(), 0),
        worker_(std::make_unique<OpWorker>()) {}

  ~SocketCommunicator() override {
    // Operations still queued (their handles were dropped) must not wait for their deadlines.
    transport_->abort_group(gid_, "the communicator of " + rank_str(rank_) + " was destroyed",
                            {});
    worker_.reset();
  }

  const std::string& name() const override { return name_; }
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(world_ranks_.size()); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

  CommHandle all_reduce_async(Tensor t, ReduceOp op) override {
    check_cpu(CommOpKind::kAllReduce, t);
    check_reduce_dtype(*this, CommOpKind::kAllReduce, t);
    return post({CommOpKind::kAllReduce, t.dtype(), t.numel(), op, 0},
                [this, t](const OpDesc& d, uint64_t seq, Clock::time_point dl,
                          const std::string& what) { run_all_reduce(d, seq, dl, what, t); });
  }
  CommHandle reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) override {
    check_cpu(CommOpKind::kReduceScatter, out);
    check_cpu(CommOpKind::kReduceScatter, in);
    check_reduce_dtype(*this, CommOpKind::kReduceScatter, in);
    check_reduce_scatter_sizes(*this, out, in);
    return post({CommOpKind::kReduceScatter, in.dtype(), out.numel(), op, 0},
                [this, out, in](const OpDesc& d, uint64_t seq, Clock::time_point dl,
                                const std::string& what) {
                  run_reduce_scatter(d, seq, dl, what, out, in);
                });
  }
  CommHandle all_gather_async(Tensor out, const Tensor& in) override {
    check_cpu(CommOpKind::kAllGather, out);
    check_cpu(CommOpKind::kAllGather, in);
    check_all_gather_sizes(*this, out, in);
    return post({CommOpKind::kAllGather, in.dtype(), in.numel(), ReduceOp::kSum, 0},
                [this, out, in](const OpDesc& d, uint64_t seq, Clock::time_point dl,
                                const std::string& what) {
                  run_all_gather(d, seq, dl, what, out, in);
                });
  }
  CommHandle broadcast_async(Tensor t, int root) override {
    check_cpu(CommOpKind::kBroadcast, t);
    check_peer(*this, CommOpKind::kBroadcast, root);
    return post({CommOpKind::kBroadcast, t.dtype(), t.numel(), ReduceOp::kSum, root},
                [this, t](const OpDesc& d, uint64_t seq, Clock::time_point dl,
                          const std::string& what) { run_broadcast(d, seq, dl, what, t); });
  }
  CommHandle barrier_async() override {
    return post({CommOpKind::kBarrier, DType::kF32, 0, ReduceOp::kSum, 0},
                [this](const OpDesc& d, uint64_t seq, Clock::time_point dl,
                       const std::string& what) {
                  const std::vector<int> others = all_but_me();
                  for (int r : others) send_to(r, d, seq, 0, nullptr, 0, dl, what);
                  recv_from(others, d, seq, 0, dl, what);
                });
  }
  CommHandle send_async(const Tensor& t, int peer) override {
    return CommHandle(p2p_send(t, peer));
  }
  CommHandle recv_async(Tensor t, int peer) override { return CommHandle(p2p_recv(t, peer)); }
  CommHandle batch_send_recv_async(std::span<const P2POp> ops) override {
    std::vector<std::shared_ptr<CommWork>> parts;
    for (const P2POp& op : ops) {
      parts.push_back(op.kind == P2POp::Kind::kSend ? p2p_send(op.tensor, op.peer)
                                                    : p2p_recv(op.tensor, op.peer));
    }
    return CommHandle(std::make_shared<BatchWork>(std::move(parts)));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    SHARDLM_REQUIRE(color >= 0 || color == kNoColor, ErrorKind::kInvalidArgument,
                    "split on group '" + name_ + "': color " + std::to_string(color) +
                        " must be >= 0 or kNoColor");
    auto members = std::make_shared<std::vector<int>>();  // new group, as parent ranks
    auto child_gid = std::make_shared<uint64_t>(0);
    post({CommOpKind::kSplit, DType::kF32, 0, ReduceOp::kSum, 0},
         [=, this](const OpDesc& d, uint64_t seq, Clock::time_point dl, const std::string& what) {
           const int64_t mine[2] = {color, key};
           const std::vector<int> others = all_but_me();
           for (int r : others) send_to(r, d, seq, 0, mine, sizeof(mine), dl, what);
           std::vector<Frame> frames = recv_from(others, d, seq, 0, dl, what);
           std::vector<int64_t> colors(size()), keys(size());
           colors[rank_] = color;
           keys[rank_] = key;
           for (size_t i = 0; i < others.size(); ++i) {
             check_payload(frames[i], sizeof(mine), what, others[i]);
             int64_t theirs[2];
             std::memcpy(theirs, frames[i].payload.get(), sizeof(theirs));
             colors[others[i]] = theirs[0];
             keys[others[i]] = theirs[1];
           }
           if (color == kNoColor) return;
           for (int r = 0; r < size(); ++r) {
             if (colors[r] == color) members->push_back(r);
           }
           std::stable_sort(members->begin(), members->end(),
                            [&](int a, int b) { return keys[a] < keys[b]; });
           uint64_t h = fnv1a(kFnvBasis, &gid_, sizeof(gid_));
           h = fnv1a(h, &seq, sizeof(seq));
           const int64_t c = color;
           *child_gid = fnv1a(h, &c, sizeof(c));
         })
        .wait();
    if (color == kNoColor) return nullptr;
    std::vector<int> world;
    int new_rank = -1;
    for (size_t i = 0; i < members->size(); ++i) {
      world.push_back(world_ranks_[(*members)[i]]);
      if ((*members)[i] == rank_) new_rank = static_cast<int>(i);
    }
    SHARDLM_CHECK(new_rank >= 0);
    return std::make_unique<SocketCommunicator>(transport_, *child_gid, name, std::move(world),
                                                new_rank, timeout_);
  }

  void abort(const std::string& reason) override {
    const std::string why = "aborted by " + rank_str(rank_) + ": " + reason;
    transport_->set_goodbye_reason(why);
    transport_->abort_group(gid_, why, world_ranks_);
  }

 private:
  using Body = std::function<void(const OpDesc&, uint64_t, Clock::time_point,
                                  const std::string&)>;

  std::string rank_str(int r) const {
    return "rank " + std::to_string(r) + " (world rank " + std::to_string(world_ranks_[r]) + ")";
  }
  std::vector<int> all_but_me() const {
    std::vector<int> out;
    for (int r = 0; r < size(); ++r) {
      if (r != rank_) out.push_back(r);
    }
    return out;
  }
  int group_rank_of(int world_rank) const {
    auto it = std::find(world_ranks_.begin(), world_ranks_.end(), world_rank);
    SHARDLM_CHECK(it != world_ranks_.end());
    return static_cast<int>(it - world_ranks_.begin());
  }

  void check_cpu(CommOpKind kind, const Tensor& t) const {
    SHARDLM_REQUIRE(t.device().is_cpu() || t.numel() == 0, ErrorKind::kUnsupported,
                    std::string(comm_op_name(kind)) + " on group '" + name_ +
                        "': the socket communicator works on CPU tensors, got a tensor on " +
                        t.device().to_string() + " (use the NCCL communicator on GPUs)");
  }

  void check_usable(const std::string& what) const {
    const std::string reason = transport_->abort_reason(gid_);
    if (!reason.empty()) {
      throw Error(ErrorKind::kTimeout, "[group '" + name_ + "'] " + what + " at " +
                                           rank_str(rank_) +
                                           ": the group was aborted earlier (" + reason + ")");
    }
  }

  // Aborts the group on every member (so they fail fast too) and throws for this rank.
  [[noreturn]] void fail(const std::string& what, const std::string& cause,
                         const std::vector<int>& missing_world) const {
    std::vector<int> missing;
    for (int w : missing_world) missing.push_back(group_rank_of(w));
    std::ostringstream os;
    os << "[group '" << name_ << "'] " << what << " failed at " << rank_str(rank_) << ": "
       << cause;
    if (!missing.empty()) os << "; " << describe_ranks(missing, world_ranks_) << " did not arrive";
    os << ". Every rank of the group must issue the same operations in the same order; a "
          "missing rank has crashed, hangs, or took another code path (see its log). If the "
          "ranks are only slow, raise the timeout (--distributed-timeout-minutes).";
    transport_->abort_group(gid_, what + " failed at " + rank_str(rank_) + ": " + cause,
                            world_ranks_);
    throw Error(ErrorKind::kTimeout, os.str());
  }

  [[noreturn]] void mismatch(const std::string& what, uint64_t seq, int their_rank,
                             const std::string& theirs, const std::string& mine) const {
    const std::string msg =
        "[group '" + name_ + "'] mismatch at " + what + ": " + rank_str(their_rank) + " called " +
        theirs + " but " + rank_str(rank_) + " called " + mine + " (operation #" +
        std::to_string(seq) + "). Every rank of a group must issue the same operations, with "
        "the same dtype and size, in the same order.";
    transport_->abort_group(gid_, "operation mismatch at " + what, world_ranks_);
    throw Error(ErrorKind::kInvalidArgument, msg);
  }

  FrameHeader header(const OpDesc& d, uint64_t seq, uint8_t channel, uint8_t phase,
                     size_t nbytes) const {
    FrameHeader h{};
    h.type = static_cast<uint8_t>(detail::FrameType::kData);
    h.channel = channel;
    h.phase = phase;
    h.kind = static_cast<uint8_t>(d.kind);
    h.group = gid_;
    h.seq = seq;
    h.numel = d.numel;
    h.dtype = static_cast<uint8_t>(d.dtype);
    h.reduce_op = static_cast<uint8_t>(d.op);
    h.root = d.root;
    h.nbytes = nbytes;
    return h;
  }

  void send_to(int r, const OpDesc& d, uint64_t seq, uint8_t phase, const void* data,
               size_t nbytes, Clock::time_point deadline, const std::string& what) const {
    try {
      transport_->send(world_ranks_[r], header(d, seq, kCollectiveChannel, phase, nbytes), data,
                       deadline);
    } catch (const Error& e) {
      fail(what, rank_str(r) + " is dead (" + e.what() + ")", {});
    }
  }

  // Frames of `phase` from group ranks `from` (in that order); checks they run the same op.
  std::vector<Frame> recv_from(const std::vector<int>& from, const OpDesc& d, uint64_t seq,
                               uint8_t phase, Clock::time_point deadline,
                               const std::string& what) const {
    std::vector<MailKey> keys;
    for (int r : from) keys.push_back({gid_, world_ranks_[r], kCollectiveChannel, seq, phase});
    std::vector<Frame> frames;
    WaitFailure f;
    if (!transport_->wait_frames(keys, gid_, deadline, frames, f)) raise(what, f);
    for (size_t i = 0; i < frames.size(); ++i) {
      const OpDesc theirs = OpDesc::from(frames[i].header);
      if (!(theirs == d)) mismatch(what, seq, from[i], theirs.to_string(), d.to_string());
    }
    return frames;
  }

  [[noreturn]] void raise(const std::string& what, const WaitFailure& f) const {
    switch (f.kind) {
      case WaitFailure::Kind::kAborted:
        fail(what, "the group was aborted (" + f.reason + ")", f.missing);
      case WaitFailure::Kind::kPeerGone:
        fail(what, rank_str(group_rank_of(f.peer)) + " is dead (" + f.reason + ")", f.missing);
      default:
        fail(what, "timed out after " + seconds_str(timeout_), f.missing);
    }
  }

  void check_payload(const Frame& f, size_t expected, const std::string& what, int from) const {
    SHARDLM_REQUIRE(f.header.nbytes == expected, ErrorKind::kInternal,
                    "[group '" + name_ + "'] " + what + ": " + rank_str(from) + " sent " +
                        std::to_string(f.header.nbytes) + " bytes, expected " +
                        std::to_string(expected));
  }

  CommHandle post(const OpDesc& desc, Body body) {
    const uint64_t seq = seq_++;
    const std::string what = desc.to_string() + " #" + std::to_string(seq);
    check_usable(what);
    const auto deadline = Clock::now() + timeout_;
    auto state = std::make_shared<OpState>();
    worker_->post([this, state, desc, seq, deadline, what, body = std::move(body)] {
      try {
        check_usable(what);
        body(desc, seq, deadline, what);
        state->finish(nullptr);
      } catch (...) {
        state->finish(std::current_exception());
      }
    });
    return CommHandle(std::make_shared<StateWork>(std::move(state)));
  }

  // ---- collectives (run on the worker) ----
  void run_all_reduce(const OpDesc& d, uint64_t seq, Clock::time_point dl,
                      const std::string& what, Tensor t) const {
    const int n = size();
    const size_t es = dtype_size(d.dtype);
    auto* base = static_cast<std::byte*>(t.raw());
    auto begin = [&](int i) { return d.numel * i / n; };
    auto len = [&](int i) { return begin(i + 1) - begin(i); };
    const std::vector<int> others = all_but_me();
    // Phase 0: range i of the input to rank i; rank_ folds its range in rank order.
    for (int r : others) {
      send_to(r, d, seq, 0, base + begin(r) * es, len(r) * es, dl, what);
    }
    std::vector<Frame> frames = recv_from(others, d, seq, 0, dl, what);
    std::vector<const void*> inputs(n);
    inputs[rank_] = base + begin(rank_) * es;
    for (size_t i = 0; i < others.size(); ++i) {
      check_payload(frames[i], len(rank_) * es, what, others[i]);
      inputs[others[i]] = frames[i].payload.get();
    }
    std::vector<std::byte> reduced(len(rank_) * es);
    detail::host_reduce(d.dtype, d.op, reduced.data(), inputs, 0, len(rank_));
    // Phase 1: every reduced range to every rank.
    for (int r : others) send_to(r, d, seq, 1, reduced.data(), reduced.size(), dl, what);
    if (!reduced.empty()) std::memcpy(base + begin(rank_) * es, reduced.data(), reduced.size());
    frames = recv_from(others, d, seq, 1, dl, what);
    for (size_t i = 0; i < others.size(); ++i) {
      const int r = others[i];
      check_payload(frames[i], len(r) * es, what, r);
      if (len(r) > 0) std::memcpy(base + begin(r) * es, frames[i].payload.get(), len(r) * es);
    }
  }

  void run_reduce_scatter(const OpDesc& d, uint64_t seq, Clock::time_point dl,
                          const std::string& what, Tensor out, Tensor in) const {
    const int n = size();
    const size_t block = static_cast<size_t>(d.numel) * dtype_size(d.dtype);
    const auto* base = static_cast<const std::byte*>(in.raw());
    const std::vector<int> others = all_but_me();
    for (int r : others) send_to(r, d, seq, 0, base + block * r, block, dl, what);
    std::vector<Frame> frames = recv_from(others, d, seq, 0, dl, what);
    std::vector<const void*> inputs(n);
    inputs[rank_] = base + block * rank_;
    for (size_t i = 0; i < others.size(); ++i) {
      check_payload(frames[i], block, what, others[i]);
      inputs[others[i]] = frames[i].payload.get();
    }
    std::vector<std::byte> reduced(block);
    detail::host_reduce(d.dtype, d.op, reduced.data(), inputs, 0, d.numel);
    if (block) std::memcpy(out.raw(), reduced.data(), block);
  }

  void run_all_gather(const OpDesc& d, uint64_t seq, Clock::time_point dl,
                      const std::string& what, Tensor out, Tensor in) const {
    const size_t chunk = static_cast<size_t>(d.numel) * dtype_size(d.dtype);
    auto* base = static_cast<std::byte*>(out.raw());
    const std::vector<int> others = all_but_me();
    for (int r : others) send_to(r, d, seq, 0, in.raw(), chunk, dl, what);
    if (chunk && base + chunk * rank_ != in.raw()) {
      std::memmove(base + chunk * rank_, in.raw(), chunk);
    }
    std::vector<Frame> frames = recv_from(others, d, seq, 0, dl, what);
    for (size_t i = 0; i < others.size(); ++i) {
      check_payload(frames[i], chunk, what, others[i]);
      if (chunk) std::memcpy(base + chunk * others[i], frames[i].payload.get(), chunk);
    }
  }

  void run_broadcast(const OpDesc& d, uint64_t seq, Clock::time_point dl,
                     const std::string& what, Tensor t) const {
    const size_t bytes = static_cast<size_t>(d.numel) * dtype_size(d.dtype);
    if (rank_ == d.root) {
      for (int r : all_but_me()) send_to(r, d, seq, 0, t.raw(), bytes, dl, what);
      return;
    }
    std::vector<Frame> frames = recv_from({d.root}, d, seq, 0, dl, what);
    check_payload(frames[0], bytes, what, d.root);
    if (bytes) std::memcpy(t.raw(), frames[0].payload.get(), bytes);
  }

  // ---- point-to-point (on the caller's thread) ----
  std::shared_ptr<CommWork> p2p_send(const Tensor& t, int peer) {
    check_cpu(CommOpKind::kSend, t);
    check_peer(*this, CommOpKind::kSend, peer);
    const uint64_t seq = send_seq_[peer]++;
    const OpDesc d{CommOpKind::kSend, t.dtype(), t.numel(), ReduceOp::kSum, 0};
    const std::string what = d.to_string() + " to rank " + std::to_string(peer) + " #" +
                             std::to_string(seq);
    check_usable(what);
    auto state = std::make_shared<OpState>();
    try {
      try {
        transport_->send(world_ranks_[peer], header(d, seq, kP2PChannel, 0, t.nbytes()), t.raw(),
                         Clock::now() + timeout_);
      } catch (const Error& e) {
        fail(what, rank_str(peer) + " is dead (" + e.what() + ")", {world_ranks_[peer]});
      }
      state->finish(nullptr);
    } catch (...) {
      state->finish(std::current_exception());
    }
    return std::make_shared<StateWork>(std::move(state));
  }

  class RecvWork final : public CommWork {
   public:
    RecvWork(const SocketCommunicator* comm, Tensor t, int peer, uint64_t seq, OpDesc desc,
             std::string what, Clock::time_point deadline)
        : comm_(comm), t_(t), peer_(peer), seq_(seq), desc_(desc), what_(std::move(what)),
          deadline_(deadline) {}
    void wait() override {
      const MailKey key{comm_->gid_, comm_->world_ranks_[peer_], kP2PChannel, seq_, 0};
      std::vector<Frame> frames;
      WaitFailure f;
      if (!comm_->transport_->wait_frames({&key, 1}, comm_->gid_, deadline_, frames, f)) {
        comm_->raise(what_, f);
      }
      const FrameHeader& h = frames[0].header;
      if (static_cast<DType>(h.dtype) != desc_.dtype || h.numel != desc_.numel) {
        comm_->mismatch(what_, seq_, peer_, OpDesc::from(h).to_string(), desc_.to_string());
      }
      comm_->check_payload(frames[0], t_.nbytes(), what_, peer_);
      if (t_.nbytes()) std::memcpy(t_.raw(), frames[0].payload.get(), t_.nbytes());
    }
    bool is_completed() override {
      const MailKey key{comm_->gid_, comm_->world_ranks_[peer_], kP2PChannel, seq_, 0};
      return comm_->transport_->has_frame(key) ||
             !comm_->transport_->abort_reason(comm_->gid_).empty() ||
             !comm_->transport_->peer_gone(comm_->world_ranks_[peer_]).empty() ||
             Clock::now() >= deadline_;
    }

   private:
    const SocketCommunicator* comm_;
    Tensor t_;
    int peer_;
    uint64_t seq_;
    OpDesc desc_;
    std::string what_;
    Clock::time_point deadline_;
  };

  std::shared_ptr<CommWork> p2p_recv(Tensor t, int peer) {
    check_cpu(CommOpKind::kRecv, t);
    check_peer(*this, CommOpKind::kRecv, peer);
    const uint64_t seq = recv_seq_[peer]++;
    const OpDesc d{CommOpKind::kRecv, t.dtype(), t.numel(), ReduceOp::kSum, 0};
    const std::string what = d.to_string() + " from rank " + std::to_string(peer) + " #" +
                             std::to_string(seq);
    check_usable(what);
    return std::make_shared<RecvWork>(this, t, peer, seq, d, what, Clock::now() + timeout_);
  }

  std::shared_ptr<SocketTransport> transport_;
  uint64_t gid_;
  std::string name_;
  std::vector<int> world_ranks_;
  int rank_;
  std::chrono::milliseconds timeout_;
  uint64_t seq_ = 0;
  std::vector<uint64_t> send_seq_, recv_seq_;
  std::unique_ptr<OpWorker> worker_;  // last: joined first on destruction
};

}  // namespace

std::unique_ptr<Communicator> create_socket_world(TcpStore& store, int rank, int world_size,
                                                  SocketWorldOptions options) {
  const std::string prefix = "sockcomm/" + options.name + "/";
  auto transport = SocketTransport::connect(store, prefix, rank, world_size, options.host,
                                            options.timeout);
  std::vector<int> ranks(world_size);
  std::iota(ranks.begin(), ranks.end(), 0);
  const uint64_t gid = fnv1a(kFnvBasis, options.name.data(), options.name.size());
  return std::make_unique<SocketCommunicator>(std::move(transport), gid, options.name,
                                              std::move(ranks), rank, options.timeout);
}

}  // namespace shardlm::dist
