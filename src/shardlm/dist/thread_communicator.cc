#include "shardlm/dist/thread_communicator.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <iomanip>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>
#include <tuple>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/dist/detail/host_reduce.h"

namespace shardlm::dist {
namespace detail {

struct ThreadGroupState;

// What every member posts for one collective (first arriver's description is the reference).
struct OpDesc {
  CommOpKind kind = CommOpKind::kBarrier;
  DType dtype = DType::kF32;
  int64_t numel = 0;  // per-rank element count (all_gather: input; reduce_scatter: output)
  ReduceOp op = ReduceOp::kSum;
  int root = 0;

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

// One collective (or one send/recv pair) in flight. Guarded by the group's mutex.
struct Slot {
  OpDesc desc;
  int first_rank = 0;
  std::vector<const void*> in;
  std::vector<void*> out;
  std::vector<char> arrived;
  int n_arrived = 0;
  bool done = false;
  ErrorKind error_kind = ErrorKind::kInternal;
  std::string error;  // non-empty: the operation failed for every member
  // split
  std::vector<int> colors, keys;
  std::vector<std::string> names;
  std::vector<std::shared_ptr<ThreadGroupState>> new_group;
  std::vector<int> new_rank;
  // point-to-point: members are {src, dst}; desc.numel/dtype from the sender
  int src = -1, dst = -1;
  OpDesc recv_desc;
};

struct ThreadWorldState {
  int size = 0;
  ThreadWorldOptions options;
  mutable std::mutex mu;  // guards everything below
  std::vector<std::string> dead_reason;  // empty: alive
  std::vector<char> handed_out;
  std::vector<std::weak_ptr<ThreadGroupState>> groups;

  std::string dead(int world_rank) const {
    std::lock_guard lk(mu);
    return dead_reason[world_rank];
  }
};

struct ThreadGroupState {
  std::string name;
  std::vector<int> world_ranks;
  std::shared_ptr<ThreadWorldState> world;
  std::mutex mu;  // lock order: group before world
  std::condition_variable cv;
  std::map<uint64_t, std::shared_ptr<Slot>> ops;
  std::map<std::tuple<int, int, uint64_t>, std::shared_ptr<Slot>> p2p;
  std::string abort_reason;  // non-empty: aborted

  int size() const { return static_cast<int>(world_ranks.size()); }
  std::string rank_str(int r) const {
    return "rank " + std::to_string(r) + " (world rank " + std::to_string(world_ranks[r]) + ")";
  }
};

std::shared_ptr<ThreadGroupState> make_group(const std::shared_ptr<ThreadWorldState>& world,
                                             std::string name, std::vector<int> world_ranks) {
  auto g = std::make_shared<ThreadGroupState>();
  g->name = std::move(name);
  g->world_ranks = std::move(world_ranks);
  g->world = world;
  std::lock_guard lk(world->mu);
  std::erase_if(world->groups, [](const auto& w) { return w.expired(); });
  world->groups.push_back(g);
  return g;
}

}  // namespace detail

namespace {

using detail::OpDesc;
using detail::Slot;
using detail::ThreadGroupState;
using Clock = std::chrono::steady_clock;

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << ms.count() / 1000.0 << " s";
  return os.str();
}

// Runs a collective whose every member has arrived. Called with the group mutex held by the
// last arriver; reads all inputs before writing any output, so outputs may alias inputs.
void execute_collective(ThreadGroupState& g, Slot& s) {
  const OpDesc& d = s.desc;
  const int n = g.size();
  const size_t esize = dtype_size(d.dtype);
  std::vector<std::byte> scratch;
  switch (d.kind) {
    case CommOpKind::kAllReduce: {
      scratch.resize(static_cast<size_t>(d.numel) * esize);
      detail::host_reduce(d.dtype, d.op, scratch.data(), s.in, 0, d.numel);
      for (int r = 0; r < n; ++r) std::memcpy(s.out[r], scratch.data(), scratch.size());
      break;
    }
    case CommOpKind::kReduceScatter: {
      const size_t chunk = static_cast<size_t>(d.numel) * esize;
      scratch.resize(chunk * n);
      detail::host_reduce(d.dtype, d.op, scratch.data(), s.in, 0, d.numel * n);
      for (int r = 0; r < n; ++r) std::memcpy(s.out[r], scratch.data() + chunk * r, chunk);
      break;
    }
    case CommOpKind::kAllGather: {
      const size_t chunk = static_cast<size_t>(d.numel) * esize;
      scratch.resize(chunk * n);
      for (int r = 0; r < n; ++r) std::memcpy(scratch.data() + chunk * r, s.in[r], chunk);
      for (int r = 0; r < n; ++r) std::memcpy(s.out[r], scratch.data(), scratch.size());
      break;
    }
    case CommOpKind::kBroadcast: {
      const size_t bytes = static_cast<size_t>(d.numel) * esize;
      for (int r = 0; r < n; ++r) {
        if (r != d.root && s.out[r] != s.in[d.root]) std::memcpy(s.out[r], s.in[d.root], bytes);
      }
      break;
    }
    case CommOpKind::kBarrier: break;
    case CommOpKind::kSplit: {
      std::map<int, std::vector<int>> by_color;  // color -> parent ranks
      for (int r = 0; r < n; ++r) {
        if (s.colors[r] != kNoColor) by_color[s.colors[r]].push_back(r);
      }
      s.new_group.assign(n, nullptr);
      s.new_rank.assign(n, -1);
      for (auto& [color, members] : by_color) {
        std::stable_sort(members.begin(), members.end(),
                         [&](int a, int b) { return s.keys[a] < s.keys[b]; });
        std::vector<int> world_ranks;
        for (int m : members) world_ranks.push_back(g.world_ranks[m]);
        auto group = detail::make_group(g.world, s.names[members[0]], world_ranks);
        for (size_t i = 0; i < members.size(); ++i) {
          s.new_group[members[i]] = group;
          s.new_rank[members[i]] = static_cast<int>(i);
        }
      }
      break;
    }
    default: SHARDLM_CHECK(false && "not a collective");
  }
}

class ThreadWork final : public CommWork {
 public:
  ThreadWork(std::shared_ptr<ThreadGroupState> g, std::shared_ptr<Slot> s, int rank,
             std::string what, std::vector<int> members, Clock::time_point deadline,
             std::chrono::milliseconds timeout)
      : g_(std::move(g)), s_(std::move(s)), rank_(rank), what_(std::move(what)),
        members_(std::move(members)), deadline_(deadline), timeout_(timeout) {}

  void wait() override {
    std::unique_lock lk(g_->mu);
    for (;;) {
      if (s_->done) break;
      if (!g_->abort_reason.empty()) fail(lk, "the group was aborted (" + g_->abort_reason + ")");
      for (int m : missing()) {
        std::string why = g_->world->dead(g_->world_ranks[m]);
        if (!why.empty()) {
          fail(lk, g_->rank_str(m) + " is dead (" + why + ")");
        }
      }
      if (Clock::now() >= deadline_) fail(lk, "timed out after " + seconds_str(timeout_));
      g_->cv.wait_until(lk, deadline_);
    }
    if (!s_->error.empty()) throw Error(s_->error_kind, s_->error);
  }

  bool is_completed() override {
    std::lock_guard lk(g_->mu);
    return s_->done || !g_->abort_reason.empty();
  }

  std::shared_ptr<Slot> slot() const { return s_; }

 private:
  std::vector<int> missing() const {
    std::vector<int> out;
    for (int m : members_) {
      if (!s_->arrived[m]) out.push_back(m);
    }
    return out;
  }

  // Aborts the group (so every other member fails fast too) and throws for this rank.
  [[noreturn]] void fail(std::unique_lock<std::mutex>& lk, const std::string& cause) {
    const std::vector<int> miss = missing();
    std::ostringstream os;
    os << "[group '" << g_->name << "'] " << what_ << " failed at " << g_->rank_str(rank_)
       << ": " << cause;
    if (!miss.empty()) {
      os << "; " << describe_ranks(miss, g_->world_ranks) << " did not arrive";
    }
    os << ". Every rank of the group must issue the same operations in the same order; a "
          "missing rank has crashed, hangs, or took another code path (see its log). If the "
          "ranks are only slow, raise the timeout (--distributed-timeout-minutes).";
    if (g_->abort_reason.empty()) {
      g_->abort_reason = what_ + " failed at " + g_->rank_str(rank_) + ": " + cause;
      g_->cv.notify_all();
    }
    lk.unlock();
    throw Error(ErrorKind::kTimeout, os.str());
  }

  std::shared_ptr<ThreadGroupState> g_;
  std::shared_ptr<Slot> s_;
  int rank_;
  std::string what_;
  std::vector<int> members_;  // who must arrive (all ranks, or {src, dst})
  Clock::time_point deadline_;
  std::chrono::milliseconds timeout_;
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

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroupState> g, int rank,
                     std::chrono::milliseconds timeout)
      : g_(std::move(g)), rank_(rank), timeout_(timeout),
        send_seq_(g_->size(), 0), recv_seq_(g_->size(), 0) {}

  const std::string& name() const override { return g_->name; }
  int rank() const override { return rank_; }
  int size() const override { return g_->size(); }
  const std::vector<int>& world_ranks() const override { return g_->world_ranks; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

  CommHandle all_reduce_async(Tensor t, ReduceOp op) override {
    check_cpu(CommOpKind::kAllReduce, t);
    check_reduce_dtype(*this, CommOpKind::kAllReduce, t);
    return post({CommOpKind::kAllReduce, t.dtype(), t.numel(), op, 0}, t.raw(), t.raw());
  }
  CommHandle reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) override {
    check_cpu(CommOpKind::kReduceScatter, out);
    check_cpu(CommOpKind::kReduceScatter, in);
    check_reduce_dtype(*this, CommOpKind::kReduceScatter, in);
    check_reduce_scatter_sizes(*this, out, in);
    return post({CommOpKind::kReduceScatter, in.dtype(), out.numel(), op, 0}, in.raw(),
                out.raw());
  }
  CommHandle all_gather_async(Tensor out, const Tensor& in) override {
    check_cpu(CommOpKind::kAllGather, out);
    check_cpu(CommOpKind::kAllGather, in);
    check_all_gather_sizes(*this, out, in);
    return post({CommOpKind::kAllGather, in.dtype(), in.numel(), ReduceOp::kSum, 0}, in.raw(),
                out.raw());
  }
  CommHandle broadcast_async(Tensor t, int root) override {
    check_cpu(CommOpKind::kBroadcast, t);
    check_peer(*this, CommOpKind::kBroadcast, root);
    return post({CommOpKind::kBroadcast, t.dtype(), t.numel(), ReduceOp::kSum, root}, t.raw(),
                t.raw());
  }
  CommHandle barrier_async() override {
    return post({CommOpKind::kBarrier, DType::kF32, 0, ReduceOp::kSum, 0}, nullptr, nullptr);
  }
  CommHandle send_async(const Tensor& t, int peer) override {
    return CommHandle(post_p2p(CommOpKind::kSend, t, peer));
  }
  CommHandle recv_async(Tensor t, int peer) override {
    return CommHandle(post_p2p(CommOpKind::kRecv, t, peer));
  }
  CommHandle batch_send_recv_async(std::span<const P2POp> ops) override {
    std::vector<std::shared_ptr<CommWork>> parts;
    for (const P2POp& op : ops) {
      parts.push_back(post_p2p(
          op.kind == P2POp::Kind::kSend ? CommOpKind::kSend : CommOpKind::kRecv, op.tensor,
          op.peer));
    }
    return CommHandle(std::make_shared<BatchWork>(std::move(parts)));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    SHARDLM_REQUIRE(color >= 0 || color == kNoColor, ErrorKind::kInvalidArgument,
                    "split on group '" + g_->name + "': color " + std::to_string(color) +
                        " must be >= 0 or kNoColor");
    std::shared_ptr<Slot> slot;
    auto work = post_impl({CommOpKind::kSplit, DType::kF32, 0, ReduceOp::kSum, 0}, nullptr,
                          nullptr, [&](Slot& s) {
                            if (s.colors.empty()) {
                              s.colors.assign(size(), kNoColor);
                              s.keys.assign(size(), 0);
                              s.names.assign(size(), "");
                            }
                            s.colors[rank_] = color;
                            s.keys[rank_] = key;
                            s.names[rank_] = name;
                          });
    work->wait();
    Slot& s = *work->slot();
    if (!s.new_group[rank_]) return nullptr;
    return std::make_unique<ThreadCommunicator>(s.new_group[rank_], s.new_rank[rank_], timeout_);
  }

  void abort(const std::string& reason) override {
    std::lock_guard lk(g_->mu);
    if (g_->abort_reason.empty()) {
      g_->abort_reason = "aborted by " + g_->rank_str(rank_) + ": " + reason;
    }
    g_->cv.notify_all();
  }

 private:
  void check_cpu(CommOpKind kind, const Tensor& t) const {
    SHARDLM_REQUIRE(t.device().is_cpu() || t.numel() == 0, ErrorKind::kUnsupported,
                    std::string(comm_op_name(kind)) + " on group '" + g_->name +
                        "': the in-process communicator works on CPU tensors, got a tensor on " +
                        t.device().to_string() + " (use the NCCL communicator on GPUs)");
  }

  // Throws when this rank or its group can no longer communicate. Group mutex held.
  void check_usable(const std::string& what) const {
    const std::string dead = g_->world->dead(g_->world_ranks[rank_]);
    if (!dead.empty()) {
      throw Error(ErrorKind::kTimeout, "[group '" + g_->name + "'] " + what + " at " +
                                           g_->rank_str(rank_) + ": this rank is marked dead (" +
                                           dead + ")");
    }
    if (!g_->abort_reason.empty()) {
      throw Error(ErrorKind::kTimeout, "[group '" + g_->name + "'] " + what + " at " +
                                           g_->rank_str(rank_) +
                                           ": the group was aborted earlier (" +
                                           g_->abort_reason + ")");
    }
  }

  CommHandle post(const OpDesc& desc, const void* in, void* out) {
    return CommHandle(post_impl(desc, in, out, [](Slot&) {}));
  }

  template <typename Extra>
  std::shared_ptr<ThreadWork> post_impl(const OpDesc& desc, const void* in, void* out,
                                        Extra&& extra) {
    const uint64_t seq = seq_++;
    const std::string what = desc.to_string() + " #" + std::to_string(seq);
    const auto deadline = Clock::now() + timeout_;
    const int n = size();
    std::unique_lock lk(g_->mu);
    check_usable(what);
    auto& slot = g_->ops[seq];
    if (!slot) {
      slot = std::make_shared<Slot>();
      slot->desc = desc;
      slot->first_rank = rank_;
      slot->in.assign(n, nullptr);
      slot->out.assign(n, nullptr);
      slot->arrived.assign(n, 0);
    }
    std::shared_ptr<Slot> s = slot;
    if (!(s->desc == desc) && s->error.empty()) {
      s->error_kind = ErrorKind::kInvalidArgument;
      s->error = "[group '" + g_->name + "'] collective mismatch at operation #" +
                 std::to_string(seq) + ": " + g_->rank_str(s->first_rank) + " called " +
                 s->desc.to_string() + " but " + g_->rank_str(rank_) + " called " +
                 desc.to_string() +
                 ". Every rank of a group must issue the same collectives, with the same dtype "
                 "and size, in the same order.";
      g_->abort_reason = "collective mismatch at operation #" + std::to_string(seq);
    }
    s->in[rank_] = in;
    s->out[rank_] = out;
    extra(*s);
    s->arrived[rank_] = 1;
    if (++s->n_arrived == n || !s->error.empty()) {
      if (s->error.empty()) {
        try {
          execute_collective(*g_, *s);
        } catch (const std::exception& e) {
          s->error_kind = ErrorKind::kInternal;
          s->error = "[group '" + g_->name + "'] " + what + " failed: " + e.what();
        }
      }
      s->done = true;
      g_->ops.erase(seq);
      g_->cv.notify_all();
    }
    std::vector<int> members(n);
    std::iota(members.begin(), members.end(), 0);
    return std::make_shared<ThreadWork>(g_, s, rank_, what, std::move(members), deadline,
                                        timeout_);
  }

  std::shared_ptr<ThreadWork> post_p2p(CommOpKind kind, const Tensor& t, int peer) {
    check_cpu(kind, t);
    check_peer(*this, kind, peer);
    const bool is_send = kind == CommOpKind::kSend;
    const int src = is_send ? rank_ : peer;
    const int dst = is_send ? peer : rank_;
    const uint64_t seq = is_send ? send_seq_[peer]++ : recv_seq_[peer]++;
    const OpDesc desc{kind, t.dtype(), t.numel(), ReduceOp::kSum, 0};
    const std::string what = desc.to_string() + (is_send ? " to rank " : " from rank ") +
                             std::to_string(peer) + " #" + std::to_string(seq);
    const auto deadline = Clock::now() + timeout_;
    std::unique_lock lk(g_->mu);
    check_usable(what);
    const auto key = std::make_tuple(src, dst, seq);
    auto& slot = g_->p2p[key];
    if (!slot) {
      slot = std::make_shared<Slot>();
      slot->src = src;
      slot->dst = dst;
      slot->in.assign(size(), nullptr);
      slot->out.assign(size(), nullptr);
      slot->arrived.assign(size(), 0);
    }
    std::shared_ptr<Slot> s = slot;
    if (is_send) {
      s->desc = desc;
      s->in[rank_] = t.raw();
    } else {
      s->recv_desc = desc;
      s->out[rank_] = t.raw();
    }
    // A self-send arrives twice at the same rank: count the two sides separately.
    s->arrived[rank_] = 1;
    if (++s->n_arrived == 2) {
      if (s->desc.dtype != s->recv_desc.dtype || s->desc.numel != s->recv_desc.numel) {
        s->error_kind = ErrorKind::kInvalidArgument;
        s->error = "[group '" + g_->name + "'] point-to-point mismatch #" +
                   std::to_string(seq) + ": " + g_->rank_str(src) + " sends " +
                   s->desc.to_string() + " but " + g_->rank_str(dst) + " receives " +
                   s->recv_desc.to_string();
      } else if (s->desc.numel > 0) {
        std::memcpy(s->out[dst], s->in[src], static_cast<size_t>(s->desc.numel) *
                                                 dtype_size(s->desc.dtype));
      }
      s->done = true;
      g_->p2p.erase(key);
      g_->cv.notify_all();
    }
    std::vector<int> members = {src, dst};
    if (src == dst) members = {src};
    return std::make_shared<ThreadWork>(g_, s, rank_, what, std::move(members), deadline,
                                        timeout_);
  }

  std::shared_ptr<ThreadGroupState> g_;
  int rank_;
  std::chrono::milliseconds timeout_;
  uint64_t seq_ = 0;
  std::vector<uint64_t> send_seq_, recv_seq_;
};

}  // namespace

ThreadWorld::ThreadWorld(int size, ThreadWorldOptions options)
    : state_(std::make_shared<detail::ThreadWorldState>()) {
  SHARDLM_REQUIRE(size >= 1, ErrorKind::kInvalidArgument,
                  "ThreadWorld: size must be >= 1, got " + std::to_string(size));
  state_->size = size;
  state_->options = std::move(options);
  state_->dead_reason.assign(size, "");
  state_->handed_out.assign(size, 0);
  std::vector<int> ranks(size);
  std::iota(ranks.begin(), ranks.end(), 0);
  world_group_ = detail::make_group(state_, state_->options.name, std::move(ranks));
}

ThreadWorld::~ThreadWorld() = default;

int ThreadWorld::size() const { return state_->size; }

std::unique_ptr<Communicator> ThreadWorld::communicator(int rank) {
  SHARDLM_REQUIRE(rank >= 0 && rank < state_->size, ErrorKind::kInvalidArgument,
                  "ThreadWorld::communicator: rank " + std::to_string(rank) +
                      " is outside [0, " + std::to_string(state_->size) + ")");
  {
    std::lock_guard lk(state_->mu);
    SHARDLM_REQUIRE(!state_->handed_out[rank], ErrorKind::kInvalidArgument,
                    "ThreadWorld::communicator: rank " + std::to_string(rank) +
                        " was already handed out (one communicator per rank)");
    state_->handed_out[rank] = 1;
  }
  return std::make_unique<ThreadCommunicator>(world_group_, rank, state_->options.timeout);
}

void ThreadWorld::mark_rank_dead(int rank, const std::string& reason) {
  SHARDLM_CHECK(rank >= 0 && rank < state_->size);
  std::vector<std::shared_ptr<ThreadGroupState>> groups;
  {
    std::lock_guard lk(state_->mu);
    if (state_->dead_reason[rank].empty()) {
      state_->dead_reason[rank] = reason.empty() ? "dead" : reason;
    }
    for (auto& w : state_->groups) {
      if (auto g = w.lock()) groups.push_back(std::move(g));
    }
  }
  for (auto& g : groups) {
    std::lock_guard lk(g->mu);
    g->cv.notify_all();
  }
}

bool ThreadWorld::is_rank_dead(int rank) const {
  SHARDLM_CHECK(rank >= 0 && rank < state_->size);
  return !state_->dead(rank).empty();
}

std::vector<std::exception_ptr> ThreadWorld::run(
    const std::function<void(Communicator&)>& fn) {
  const int n = state_->size;
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<Communicator> comm = communicator(r);
        fn(*comm);
        mark_rank_dead(r, "its thread finished and will issue no more operations");
      } catch (const std::exception& e) {
        errors[r] = std::current_exception();
        mark_rank_dead(r, std::string("its thread failed: ") + e.what());
      } catch (...) {
        errors[r] = std::current_exception();
        mark_rank_dead(r, "its thread failed with a non-standard exception");
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

void rethrow_first_error(const std::vector<std::exception_ptr>& errors) {
  // Prefer a root cause over the timeouts it caused on the other ranks.
  std::exception_ptr first;
  for (const auto& e : errors) {
    if (!e) continue;
    if (!first) first = e;
    try {
      std::rethrow_exception(e);
    } catch (const Error& err) {
      if (err.kind() != ErrorKind::kTimeout) std::rethrow_exception(e);
    } catch (...) {
      std::rethrow_exception(e);
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace shardlm::dist
