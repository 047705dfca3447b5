// Communicator: the collective and point-to-point operations of one process group, as every
// layer above dist/ sees them. Two implementations: ThreadCommunicator (CPU, ranks are threads
// of one process: how every parallel layout is tested) and NcclCommunicator (GPU, one process
// per GPU). model/ and parallel/ talk only to this interface, never to NCCL.
//
// Semantics (both backends):
//  - Every member of the group calls the same collectives in the same order (as NCCL / MPI);
//    a mismatch (different op, dtype or size at the same position) is reported, not guessed.
//  - Operations act on Tensor views (contiguous). Reductions accept fp64/fp32/bf16/fp16/int32/
//    int64; data-movement ops (all_gather, broadcast, send/recv) accept any dtype.
//  - The *_async forms return a CommHandle at once; the buffers must stay alive and untouched
//    (inputs unmodified, outputs unread) until handle.wait() returns. The plain forms are
//    `*_async(...).wait()`.
//  - Failures: each operation has a deadline (timeout(), default 300 s). A member that never
//    arrives, or that is known dead / aborted, makes wait() on every surviving member throw
//    Error(ErrorKind::kTimeout, ...) naming the group, the operation and its sequence number,
//    the caller's rank and the ranks that did not arrive. A group whose operation failed is
//    aborted: later operations on it throw at once (as an aborted NCCL communicator).
//  - reduce_scatter / all_gather need in.numel() * size() == out.numel() (all_gather) or
//    in.numel() == size() * out.numel() (reduce_scatter): uneven splits are rejected with
//    kInvalidArgument (pad the buffer to a multiple of the group size, as Megatron's
//    distributed optimizer does).
//
// Thread contract: a Communicator object belongs to one rank and is used by one host thread at
// a time. Ownership: move-only handles keep the operation's shared state alive; the
// Communicator must outlive pending handles.
//
//   std::unique_ptr<Communicator> tp = world.split(color, key, "tp");
//   tp->all_reduce(grad);                                   // sum, in place, blocking
//   CommHandle h = dp->reduce_scatter_async(shard, bucket);  // overlaps with what follows
//   ... backward of the next layer ...
//   h.wait();                                                // throws kTimeout on a dead peer
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {

enum class ReduceOp { kSum, kMax, kMin };
const char* reduce_op_name(ReduceOp op);

// Operations by name, for error messages and mismatch detection.
enum class CommOpKind {
  kAllReduce, kReduceScatter, kAllGather, kBroadcast, kSend, kRecv, kBarrier, kSplit
};
const char* comm_op_name(CommOpKind kind);

// Default deadline of every operation (Megatron's --distributed-timeout-minutes is 10; torch's
// default for NCCL is 10 min; 5 min keeps failures visible without killing slow first steps).
inline constexpr std::chrono::milliseconds kDefaultCommTimeout{300'000};

// Ranks passed to split() with this color get no new group (nullptr), as NCCL_SPLIT_NOCOLOR.
inline constexpr int kNoColor = -1;

// The pending part of an asynchronous operation. Implementations live in the backends.
class CommWork {
 public:
  virtual ~CommWork() = default;
  // Blocks until the operation completed (outputs valid, inputs reusable) or throws.
  virtual void wait() = 0;
  // Non-blocking: true once wait() would return without blocking (success or failure).
  virtual bool is_completed() = 0;
};

// Move-only handle of one asynchronous operation. A default handle is already complete.
class CommHandle {
 public:
  CommHandle() = default;
  explicit CommHandle(std::shared_ptr<CommWork> work) : work_(std::move(work)) {}
  CommHandle(CommHandle&&) noexcept = default;
  CommHandle& operator=(CommHandle&&) noexcept = default;
  CommHandle(const CommHandle&) = delete;
  CommHandle& operator=(const CommHandle&) = delete;

  // Blocks until done; throws Error(kTimeout) (peer missing/dead) or Error(kInvalidArgument)
  // (mismatched calls). Calling wait() again after it returned is a no-op.
  void wait() {
    if (work_) {
      std::shared_ptr<CommWork> w = std::move(work_);
      w->wait();
    }
  }
  bool is_completed() const { return !work_ || work_->is_completed(); }
  // Started and not yet waited for (wait() still has to be called to see its outcome).
  bool pending() const { return work_ != nullptr; }

 private:
  std::shared_ptr<CommWork> work_;
};

// One send or receive of a batch (batch_send_recv_async): pipeline stages exchange both ways at
// once without deadlock.
struct P2POp {
  enum class Kind { kSend, kRecv };
  Kind kind;
  Tensor tensor;  // send: input; recv: output
  int peer;       // rank in this group
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // The group's name for messages ("world", "tp", "dp", ...).
  virtual const std::string& name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // World rank of every member, in group-rank order (for messages and checks).
  virtual const std::vector<int>& world_ranks() const = 0;

  virtual std::chrono::milliseconds timeout() const = 0;
  // Deadline of operations this rank issues from now on (subgroups inherit it at split()).
  virtual void set_timeout(std::chrono::milliseconds timeout) = 0;

  // t = op over all ranks of t (in place).
  virtual CommHandle all_reduce_async(Tensor t, ReduceOp op = ReduceOp::kSum) = 0;
  // out[n] = op over ranks r of in_r[rank()*n .. (rank()+1)*n); in.numel() == size()*n.
  virtual CommHandle reduce_scatter_async(Tensor out, const Tensor& in,
                                          ReduceOp op = ReduceOp::kSum) = 0;
  // out[size()*n] = concat over ranks r (in rank order) of in_r[n].
  virtual CommHandle all_gather_async(Tensor out, const Tensor& in) = 0;
  // t (every rank) = t on root.
  virtual CommHandle broadcast_async(Tensor t, int root) = 0;
  // The k-th send to peer matches the peer's k-th recv from this rank; same dtype and numel.
  virtual CommHandle send_async(const Tensor& t, int peer) = 0;
  virtual CommHandle recv_async(Tensor t, int peer) = 0;
  // All sends and receives of `ops` issued together (NCCL group); one handle for all.
  virtual CommHandle batch_send_recv_async(std::span<const P2POp> ops) = 0;
  virtual CommHandle barrier_async() = 0;

  // Collective over this group: members with equal color form a new group, ordered by (key,
  // rank). color == kNoColor returns nullptr. `name` names the new group in messages.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  // Marks this group failed: pending and later operations of every member throw, naming
  // `reason`. Used when this rank is about to exit on an error, so peers fail fast.
  virtual void abort(const std::string& reason) = 0;

  // Blocking forms.
  void all_reduce(Tensor t, ReduceOp op = ReduceOp::kSum) { all_reduce_async(t, op).wait(); }
  void reduce_scatter(Tensor out, const Tensor& in, ReduceOp op = ReduceOp::kSum) {
    reduce_scatter_async(out, in, op).wait();
  }
  void all_gather(Tensor out, const Tensor& in) { all_gather_async(out, in).wait(); }
  void broadcast(Tensor t, int root) { broadcast_async(t, root).wait(); }
  void send(const Tensor& t, int peer) { send_async(t, peer).wait(); }
  void recv(Tensor t, int peer) { recv_async(t, peer).wait(); }
  void batch_send_recv(std::span<const P2POp> ops) { batch_send_recv_async(ops).wait(); }
  void barrier() { barrier_async().wait(); }
};

// Shared argument checks of both backends; throw Error(kInvalidArgument) naming the group.
void check_reduce_dtype(const Communicator& comm, CommOpKind kind, const Tensor& t);
void check_reduce_scatter_sizes(const Communicator& comm, const Tensor& out, const Tensor& in);
void check_all_gather_sizes(const Communicator& comm, const Tensor& out, const Tensor& in);
void check_peer(const Communicator& comm, CommOpKind kind, int peer);

// "ranks [1, 3] (world ranks [5, 7])" — for messages.
std::string describe_ranks(const std::vector<int>& group_ranks,
                           const std::vector<int>& world_ranks_of_group);

}  // namespace shardlm::dist
