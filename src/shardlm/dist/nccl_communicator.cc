// nccl_communicator.cc — see nccl_communicator.h. The whole file is CUDA-only.
#include "shardlm/dist/nccl_communicator.h"

#ifdef SHARDLM_WITH_CUDA

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <iomanip>
#include <numeric>
#include <sstream>
#include <thread>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/dist/tcp_store.h"
#include "shardlm/ops/cuda/cuda_context.h"

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "ShardLM needs NCCL >= 2.18 (ncclCommSplit, non-blocking communicators)"
#endif

namespace shardlm::dist {
namespace {

using Clock = std::chrono::steady_clock;

void cuda_check(cudaError_t err, const char* expr) {
  if (err != cudaSuccess) {
    throw Error(err == cudaErrorMemoryAllocation ? ErrorKind::kOutOfMemory : ErrorKind::kInternal,
                std::string("NCCL communicator: ") + expr + " failed: " + cudaGetErrorName(err) +
                    " (" + cudaGetErrorString(err) + ")");
  }
}
#define DIST_CUDA_CHECK(expr) cuda_check((expr), #expr)

// ncclInProgress is not an error for non-blocking communicators: callers poll afterwards.
void nccl_check(ncclResult_t r, ncclComm_t comm, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = comm ? ncclGetLastError(comm) : nullptr;
  throw Error(r == ncclRemoteError ? ErrorKind::kTimeout : ErrorKind::kInternal,
              "NCCL " + what + " failed: " + ncclGetErrorString(r) +
                  (last && *last ? std::string(" (") + last + ")" : std::string()));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF64: return ncclFloat64;
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    default: break;
  }
  SHARDLM_CHECK(false && "nccl_type: no reduction type (checked by check_reduce_dtype)");
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // init/split/collectives may return ncclInProgress; we poll with deadlines
  return config;
}

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << ms.count() / 1000.0 << " s";
  return os.str();
}

std::string dead_key(int world_rank) { return "nccl/dead/" + std::to_string(world_rank); }

}  // namespace

// ---- pending operation ---------------------------------------------------------------------
class NcclWork final : public CommWork {
 public:
  NcclWork(NcclCommunicator* comm, cudaEvent_t done, std::string what, uint64_t seq,
           Clock::time_point deadline)
      : comm_(comm), done_(done), what_(std::move(what)), seq_(seq), deadline_(deadline) {}
  ~NcclWork() override {
    if (done_) cudaEventDestroy(done_);
  }
  void wait() override {
    if (finished_) return;
    comm_->wait_event(done_, what_, seq_, deadline_);
    finished_ = true;
  }
  bool is_completed() override { return finished_ || cudaEventQuery(done_) != cudaErrorNotReady; }

 private:
  NcclCommunicator* comm_;
  cudaEvent_t done_;
  std::string what_;
  uint64_t seq_;
  Clock::time_point deadline_;
  bool finished_ = false;
};

// ---- creation ------------------------------------------------------------------------------
NcclCommunicator::NcclCommunicator(DeviceContext& device, TcpStore* store, ncclComm* comm,
                                   std::string name, int rank, std::vector<int> world_ranks,
                                   const NcclOptions& options)
    : device_(&device), store_(store), comm_(comm), name_(std::move(name)), rank_(rank),
      world_ranks_(std::move(world_ranks)), timeout_(options.timeout),
      use_side_stream_(options.use_side_stream) {
  set_device();
  cudaStream_t s = nullptr;
  DIST_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  DIST_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&scratch_),
                             sizeof(int) * (2 * world_ranks_.size() + 2)));
}

NcclCommunicator::~NcclCommunicator() {
  close();  // never throws
  if (scratch_) cudaFree(scratch_);
  if (stream_) cudaStreamDestroy(stream_);
}

NcclCommunicator::Ending NcclCommunicator::close() noexcept {
  if (!comm_) return ending_;
  // Destroy after everything queued on our stream finished. Work still pending may wait for a
  // peer that is dead or failing too, so never wait for it unbounded: while an exception unwinds
  // this rank (it is failing) abort at once, else give the stream the operations' deadline and
  // abort if it is still busy then. (With use_side_stream false the work is on the compute
  // stream, which is not polled here.)
  bool idle = std::uncaught_exceptions() == 0;
  const auto deadline = Clock::now() + timeout_;
  while (idle && stream_ && cudaStreamQuery(stream_) == cudaErrorNotReady) {
    if (Clock::now() >= deadline) idle = false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  // A clean end finalizes first (flushes NCCL's operations and network resources; on this
  // non-blocking communicator it returns at once and is polled); destroy then only frees
  // memory. Left to ncclCommDestroy, finalizing could block unbounded. Finalizing waits for
  // the peers to finalize too; a rank ends its communicators one after another, so each gets
  // at most a minute (not the whole operation timeout) before it is aborted instead.
  if (idle) {
    const auto finalize_deadline =
        std::min(deadline, Clock::now() + std::chrono::milliseconds(60'000));
    ncclResult_t state = ncclCommFinalize(comm_);
    while (state == ncclSuccess || state == ncclInProgress) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
      if (state != ncclInProgress) break;
      if (Clock::now() >= finalize_deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    idle = state == ncclSuccess;
  }
  if (idle) {
    ncclCommDestroy(comm_);
    comm_ = nullptr;
    ending_ = Ending::kFinalized;
  } else {
    abort_nccl();
  }
  if (abort_reason_.empty()) abort_reason_ = "closed by this rank";
  return ending_;
}

void NcclCommunicator::set_device() const {
  DIST_CUDA_CHECK(cudaSetDevice(ops::cuda::cuda_state(*device_).device_index()));
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create_world(DeviceContext& device,
                                                                 TcpStore& store, int rank,
                                                                 int world_size,
                                                                 NcclOptions options) {
  SHARDLM_REQUIRE(device.device().is_cuda(), ErrorKind::kInvalidArgument,
                  "NcclCommunicator needs a CUDA DeviceContext, got " +
                      device.device().to_string());
  SHARDLM_REQUIRE(rank >= 0 && rank < world_size, ErrorKind::kInvalidArgument,
                  "NcclCommunicator: rank " + std::to_string(rank) + " outside [0, " +
                      std::to_string(world_size) + ")");
  // 1. Everyone is there (names the missing ranks if not).
  store_barrier(store, "nccl/" + options.name + "/init", rank, world_size, options.timeout);
  // 2. Rank 0's unique id to everyone.
  ncclUniqueId id;
  const std::string id_key = "nccl/" + options.name + "/unique_id";
  if (rank == 0) {
    nccl_check(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId");
    store.set(id_key, std::string(reinterpret_cast<const char*>(&id), sizeof(id)));
  }
  const std::string bytes = store.get(id_key, options.timeout);
  SHARDLM_CHECK_EQ(bytes.size(), sizeof(id));
  std::memcpy(&id, bytes.data(), sizeof(id));
  // 3. Non-blocking init, polled against the deadline.
  DIST_CUDA_CHECK(cudaSetDevice(ops::cuda::cuda_state(device).device_index()));
  ncclConfig_t config = nonblocking_config();
  ncclComm_t comm = nullptr;
  nccl_check(ncclCommInitRankConfig(&comm, world_size, id, rank, &config), comm,
             "ncclCommInitRankConfig");
  std::vector<int> ranks(world_size);
  std::iota(ranks.begin(), ranks.end(), 0);
  std::unique_ptr<NcclCommunicator> out(
      new NcclCommunicator(device, &store, comm, options.name, rank, ranks, options));
  out->await_ready(comm, "init (ncclCommInitRankConfig)", 0, Clock::now() + options.timeout);
  return out;
}

void NcclCommunicator::announce_failure(TcpStore& store, int world_rank,
                                        const std::string& reason) {
  store.set(dead_key(world_rank), reason.empty() ? "failed" : reason);
}

// ---- polling and failure -------------------------------------------------------------------
void NcclCommunicator::await_ready(ncclComm* comm, const std::string& what, uint64_t seq,
                                   Clock::time_point deadline) {
  // A first collective on a new communicator stays "in progress" until its peers connect, so
  // this loop watches for dead members as wait_event does.
  auto next_store_check = Clock::now() + std::chrono::seconds(1);
  for (;;) {
    ncclResult_t state = ncclSuccess;
    nccl_check(ncclCommGetAsyncError(comm, &state), comm, "ncclCommGetAsyncError");
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) {
      fail(what, seq, std::string("NCCL reported ") + ncclGetErrorString(state) + " (" +
                           ncclGetLastError(comm) + ")");
    }
    const auto now = Clock::now();
    if (now >= deadline) fail(what, seq, "timed out after " + seconds_str(timeout_));
    if (store_ && now >= next_store_check) {
      next_store_check = now + std::chrono::seconds(1);
      const std::string dead = dead_member();
      if (!dead.empty()) fail(what, seq, dead);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::string NcclCommunicator::dead_member() const {
  if (!store_) return "";
  // The store is only a hint: when it is gone (rank 0, its server, finished its part and
  // exited) the deadline still decides, so a slower healthy rank does not fail on it.
  try {
    std::vector<std::string> keys;
    for (int w : world_ranks_) keys.push_back(dead_key(w));
    const std::vector<bool> present = store_->check(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (present[i] && static_cast<int>(i) != rank_) {
        return "rank " + std::to_string(i) + " (world rank " + std::to_string(world_ranks_[i]) +
               ") is dead (" + store_->get(keys[i], std::chrono::milliseconds(1000)) + ")";
      }
    }
  } catch (const Error&) {
  }
  return "";
}

void NcclCommunicator::wait_event(cudaEvent_t done, const std::string& what, uint64_t seq,
                                  Clock::time_point deadline) {
  // Closed cleanly: everything queued had finished, so a handle waited on afterwards is done.
  if (ending_ == Ending::kFinalized && cudaEventQuery(done) == cudaSuccess) return;
  // Another handle's failure aborted the group: this operation's result is gone too.
  check_usable(what + " #" + std::to_string(seq));
  const auto start = Clock::now();
  auto next_store_check = start + std::chrono::seconds(1);
  for (;;) {
    const cudaError_t q = cudaEventQuery(done);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) DIST_CUDA_CHECK(q);
    ncclResult_t state = ncclSuccess;
    nccl_check(ncclCommGetAsyncError(comm_, &state), comm_, "ncclCommGetAsyncError");
    if (state != ncclSuccess && state != ncclInProgress) {
      fail(what, seq, std::string("NCCL reported ") + ncclGetErrorString(state) + " (" +
                          ncclGetLastError(comm_) + ")");
    }
    const auto now = Clock::now();
    if (now >= deadline) fail(what, seq, "timed out after " + seconds_str(timeout_));
    if (store_ && now >= next_store_check) {
      next_store_check = now + std::chrono::seconds(1);
      const std::string dead = dead_member();
      if (!dead.empty()) fail(what, seq, dead);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(now - start < std::chrono::milliseconds(2) ? 5 : 200));
  }
  if (use_side_stream_) {
    DIST_CUDA_CHECK(cudaStreamWaitEvent(ops::cuda::cuda_state(*device_).stream(), done, 0));
  }
}

void NcclCommunicator::fail(const std::string& what, uint64_t seq, const std::string& cause) {
  std::ostringstream os;
  os << "[group '" << name_ << "'] " << what << " #" << seq << " failed at rank " << rank_
     << " (world rank " << world_ranks_[rank_] << "): " << cause;
  // Name the ranks that never reached this operation: every rank that times out here reports
  // itself in the store; whoever has not reported within a short grace period is missing.
  if (store_) {
    try {
      const std::string prefix = "nccl/progress/" + name_ + "/" + std::to_string(seq) + "/";
      store_->set(prefix + std::to_string(world_ranks_[rank_]), "1");
      std::vector<std::string> keys;
      for (int w : world_ranks_) keys.push_back(prefix + std::to_string(w));
      const auto grace = Clock::now() + std::min<std::chrono::milliseconds>(
                                            timeout_, std::chrono::milliseconds(5000));
      std::vector<bool> present;
      do {
        present = store_->check(keys);
        if (std::all_of(present.begin(), present.end(), [](bool b) { return b; })) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      } while (Clock::now() < grace);
      std::vector<int> missing;
      for (size_t i = 0; i < present.size(); ++i) {
        if (!present[i]) missing.push_back(static_cast<int>(i));
      }
      if (!missing.empty()) os << "; " << describe_ranks(missing, world_ranks_) << " did not arrive";
    } catch (const Error&) {
      os << "; the rendezvous store is unreachable, so the missing ranks are unknown";
    }
  } else {
    os << "; NCCL cannot tell which ranks are missing (no rendezvous store attached)";
  }
  os << ". Every rank of the group must issue the same operations in the same order; a missing "
        "rank has crashed, hangs, or took another code path (see its log). If the ranks are "
        "only slow, raise the timeout (--distributed-timeout-minutes).";
  abort_nccl();
  abort_reason_ = what + " #" + std::to_string(seq) + " failed: " + cause;
  throw Error(ErrorKind::kTimeout, os.str());
}

void NcclCommunicator::abort(const std::string& reason) {
  // Ended cleanly already: nothing to abort, and marking this rank dead would fail its peers.
  if (ending_ == Ending::kFinalized) return;
  if (store_) {
    try {
      announce_failure(*store_, world_ranks_[rank_], reason);
    } catch (const Error&) {
      // best effort: the store may already be gone
    }
  }
  abort_nccl();
  if (abort_reason_.empty()) abort_reason_ = "aborted by this rank: " + reason;
}

void NcclCommunicator::abort_nccl() noexcept {
  if (!comm_) return;
  ncclCommAbort(comm_);
  comm_ = nullptr;
  ending_ = Ending::kAborted;
}

void NcclCommunicator::check_usable(const std::string& what) const {
  if (!abort_reason_.empty() || !comm_) {
    throw Error(ErrorKind::kTimeout, "[group '" + name_ + "'] " + what + " at rank " +
                                         std::to_string(rank_) + ": the group was " +
                                         (ending_ == Ending::kFinalized ? "closed" : "aborted") +
                                         " earlier (" + abort_reason_ + ")");
  }
}

void NcclCommunicator::check_tensor(CommOpKind kind, const Tensor& t) const {
  const Device d = device_->device();
  if (t.numel() > 0 && t.device() != d) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string(comm_op_name(kind)) + " on group '" + name_ + "': tensor on " +
                    t.device().to_string() + " but the communicator's device is " +
                    d.to_string());
  }
}

// ---- operations ----------------------------------------------------------------------------
template <typename Issue>
CommHandle NcclCommunicator::enqueue(const std::string& what, Issue&& issue) {
  check_usable(what);
  set_device();
  const uint64_t seq = seq_++;
  cudaStream_t compute = ops::cuda::cuda_state(*device_).stream();
  cudaStream_t s = use_side_stream_ ? stream_ : compute;
  if (use_side_stream_) {
    cudaEvent_t ready = nullptr;
    DIST_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    DIST_CUDA_CHECK(cudaEventRecord(ready, compute));
    DIST_CUDA_CHECK(cudaStreamWaitEvent(s, ready, 0));
    DIST_CUDA_CHECK(cudaEventDestroy(ready));  // released once the wait has been satisfied
  }
  const auto deadline = Clock::now() + timeout_;
  issue(s);
  await_ready(comm_, what, seq, deadline);
  cudaEvent_t done = nullptr;
  DIST_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  DIST_CUDA_CHECK(cudaEventRecord(done, s));
  return CommHandle(std::make_shared<NcclWork>(this, done, what, seq, deadline));
}

CommHandle NcclCommunicator::all_reduce_async(Tensor t, ReduceOp op) {
  check_tensor(CommOpKind::kAllReduce, t);
  check_reduce_dtype(*this, CommOpKind::kAllReduce, t);
  return enqueue("all_reduce", [&](cudaStream_t s) {
    nccl_check(ncclAllReduce(t.raw(), t.raw(), t.numel(), nccl_type(t.dtype()), nccl_op(op),
                             comm_, s),
               comm_, "all_reduce");
  });
}

CommHandle NcclCommunicator::reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) {
  check_tensor(CommOpKind::kReduceScatter, out);
  check_tensor(CommOpKind::kReduceScatter, in);
  check_reduce_dtype(*this, CommOpKind::kReduceScatter, in);
  check_reduce_scatter_sizes(*this, out, in);
  return enqueue("reduce_scatter", [&](cudaStream_t s) {
    nccl_check(ncclReduceScatter(in.raw(), out.raw(), out.numel(), nccl_type(in.dtype()),
                                 nccl_op(op), comm_, s),
               comm_, "reduce_scatter");
  });
}

CommHandle NcclCommunicator::all_gather_async(Tensor out, const Tensor& in) {
  check_tensor(CommOpKind::kAllGather, out);
  check_tensor(CommOpKind::kAllGather, in);
  check_all_gather_sizes(*this, out, in);
  return enqueue("all_gather", [&](cudaStream_t s) {
    nccl_check(ncclAllGather(in.raw(), out.raw(), in.nbytes(), ncclUint8, comm_, s), comm_,
               "all_gather");
  });
}

CommHandle NcclCommunicator::broadcast_async(Tensor t, int root) {
  check_tensor(CommOpKind::kBroadcast, t);
  check_peer(*this, CommOpKind::kBroadcast, root);
  return enqueue("broadcast", [&](cudaStream_t s) {
    nccl_check(ncclBroadcast(t.raw(), t.raw(), t.nbytes(), ncclUint8, root, comm_, s), comm_,
               "broadcast");
  });
}

CommHandle NcclCommunicator::send_async(const Tensor& t, int peer) {
  const P2POp op{P2POp::Kind::kSend, t, peer};
  return batch_send_recv_async(std::span<const P2POp>(&op, 1));
}

CommHandle NcclCommunicator::recv_async(Tensor t, int peer) {
  const P2POp op{P2POp::Kind::kRecv, t, peer};
  return batch_send_recv_async(std::span<const P2POp>(&op, 1));
}

CommHandle NcclCommunicator::batch_send_recv_async(std::span<const P2POp> ops) {
  std::string what = ops.size() == 1 ? "" : "batch(";
  for (const P2POp& op : ops) {
    const CommOpKind kind = op.kind == P2POp::Kind::kSend ? CommOpKind::kSend : CommOpKind::kRecv;
    check_tensor(kind, op.tensor);
    check_peer(*this, kind, op.peer);
    if (what.size() > 6) what += ", ";
    what += std::string(comm_op_name(kind)) +
            (kind == CommOpKind::kSend ? " to rank " : " from rank ") + std::to_string(op.peer);
  }
  if (ops.size() != 1) what += ")";
  return enqueue(what, [&](cudaStream_t s) {
    nccl_check(ncclGroupStart(), comm_, "ncclGroupStart");
    for (const P2POp& op : ops) {
      if (op.kind == P2POp::Kind::kSend) {
        nccl_check(ncclSend(op.tensor.raw(), op.tensor.nbytes(), ncclUint8, op.peer, comm_, s),
                   comm_, "send");
      } else {
        nccl_check(ncclRecv(op.tensor.raw(), op.tensor.nbytes(), ncclUint8, op.peer, comm_, s),
                   comm_, "recv");
      }
    }
    nccl_check(ncclGroupEnd(), comm_, "ncclGroupEnd");
  });
}

CommHandle NcclCommunicator::barrier_async() {
  return enqueue("barrier", [&](cudaStream_t s) {
    nccl_check(ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, s), comm_,
               "barrier");
  });
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key,
                                                      const std::string& name) {
  SHARDLM_REQUIRE(color >= 0 || color == kNoColor, ErrorKind::kInvalidArgument,
                  "split on group '" + name_ + "': color " + std::to_string(color) +
                      " must be >= 0 or kNoColor");
  // Learn every member's (color, key) so the new group's world ranks are known here.
  const int n = size();
  const int mine[2] = {color, key};
  int* gathered = scratch_ + 2;
  set_device();
  DIST_CUDA_CHECK(cudaMemcpyAsync(scratch_, mine, sizeof(mine), cudaMemcpyHostToDevice, stream_));
  {
    check_usable("split");
    const uint64_t seq = seq_++;
    const auto deadline = Clock::now() + timeout_;
    nccl_check(ncclAllGather(scratch_, gathered, 2, ncclInt32, comm_, stream_), comm_,
               "split (all_gather of colors)");
    await_ready(comm_, "split", seq, deadline);
    cudaEvent_t done = nullptr;
    DIST_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    DIST_CUDA_CHECK(cudaEventRecord(done, stream_));
    NcclWork work(this, done, "split", seq, deadline);
    work.wait();
  }
  std::vector<int> all(2 * n);
  DIST_CUDA_CHECK(cudaMemcpy(all.data(), gathered, sizeof(int) * 2 * n, cudaMemcpyDeviceToHost));
  std::vector<int> members;
  for (int r = 0; r < n; ++r) {
    if (color != kNoColor && all[2 * r] == color) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
  std::vector<int> world_ranks;
  int new_rank = -1;
  for (int m : members) {
    if (m == rank_) new_rank = static_cast<int>(world_ranks.size());
    world_ranks.push_back(world_ranks_[m]);
  }
  // The NCCL split itself (collective over this group).
  ncclConfig_t config = nonblocking_config();
  ncclComm_t child = nullptr;
  const auto deadline = Clock::now() + timeout_;
  nccl_check(ncclCommSplit(comm_, color == kNoColor ? NCCL_SPLIT_NOCOLOR : color, key, &child,
                           &config),
             comm_, "ncclCommSplit");
  await_ready(comm_, "split (ncclCommSplit)", seq_ - 1, deadline);
  if (color == kNoColor) return nullptr;
  SHARDLM_CHECK(child != nullptr);
  NcclOptions options{timeout_, use_side_stream_, name};
  std::unique_ptr<NcclCommunicator> out(new NcclCommunicator(
      *device_, store_, child, name, new_rank, std::move(world_ranks), options));
  out->await_ready(child, "split (new communicator)", 0, deadline);
  int nccl_rank = -1;
  nccl_check(ncclCommUserRank(child, &nccl_rank), child, "ncclCommUserRank");
  SHARDLM_CHECK_EQ(nccl_rank, new_rank);
  return out;
}

}  // namespace shardlm::dist

#endif  // SHARDLM_WITH_CUDA
