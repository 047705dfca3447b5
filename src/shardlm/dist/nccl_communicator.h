// NcclCommunicator: the GPU Communicator — one process per GPU, NCCL for every collective.
// Compiled only in CUDA builds (SHARDLM_WITH_CUDA); link with NCCL (see the report/README).
//
// Bootstrap: create_world() meets every rank at a TcpStore barrier (which names the ranks that
// never arrive), rank 0 publishes ncclGetUniqueId() through the store, and all ranks call
// ncclCommInitRankConfig in non-blocking mode, polled against the deadline. Subgroups come from
// ncclCommSplit (after an all_gather of (color, key) so each rank knows its group's world ranks).
//
// Streams: by default every operation runs on the communicator's own stream, ordered after the
// work already queued on the DeviceContext's compute stream (event), so communication overlaps
// the compute queued after it; wait() makes the compute stream wait for the result. With
// NcclOptions::use_side_stream = false operations run directly on the compute stream.
//
// Failures: wait() polls the completion event, ncclCommGetAsyncError and (when a store is
// attached) the store's "dead rank" marks. Past the deadline, or on an NCCL error, it aborts the
// NCCL communicator (ncclCommAbort) and throws Error(kTimeout) naming the group, operation,
// sequence number, its rank and — via the store — the ranks that never reached the operation.
// announce_failure() is how a rank that is about to exit on an error makes its peers fail fast.
//
// Thread contract: one host thread per communicator (its rank's). Ownership: owns the NCCL
// communicator, its stream and a small device scratch; the DeviceContext and the TcpStore must
// outlive it; pending handles must be waited before it is destroyed.
//
//   TcpStore store({.host = env.master_addr, .port = env.master_port, .is_server = env.rank == 0});
//   auto world = NcclCommunicator::create_world(ctx, store, env.rank, env.world_size);
//   RankContext rc = RankContext::create(ctx, std::move(world), layout, env.local_rank);
#pragma once

#ifdef SHARDLM_WITH_CUDA

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"

struct ncclComm;
struct CUstream_st;
struct CUevent_st;

namespace shardlm::dist {

class TcpStore;
class NcclWork;

struct NcclOptions {
  std::chrono::milliseconds timeout = kDefaultCommTimeout;
  bool use_side_stream = true;  // own stream per communicator (overlap); false: compute stream
  std::string name = "world";   // name of the world group (store keys and messages)
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over all world_size processes. `device` must have the CUDA backend initialised.
  static std::unique_ptr<NcclCommunicator> create_world(DeviceContext& device, TcpStore& store,
                                                        int rank, int world_size,
                                                        NcclOptions options = {});
  // Marks this world rank dead in the store so peers waiting on it fail fast with `reason`.
  static void announce_failure(TcpStore& store, int world_rank, const std::string& reason);

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  const std::string& name() const override { return name_; }
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(world_ranks_.size()); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

  CommHandle all_reduce_async(Tensor t, ReduceOp op = ReduceOp::kSum) override;
  CommHandle reduce_scatter_async(Tensor out, const Tensor& in,
                                  ReduceOp op = ReduceOp::kSum) override;
  CommHandle all_gather_async(Tensor out, const Tensor& in) override;
  CommHandle broadcast_async(Tensor t, int root) override;
  CommHandle send_async(const Tensor& t, int peer) override;
  CommHandle recv_async(Tensor t, int peer) override;
  CommHandle batch_send_recv_async(std::span<const P2POp> ops) override;
  CommHandle barrier_async() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;
  void abort(const std::string& reason) override;

  // How close() ended the NCCL communicator: kFinalized (the stream drained and every peer
  // finalized in time: ncclCommFinalize + ncclCommDestroy) or kAborted (ncclCommAbort: called
  // while an exception unwinds, a deadline passed, or abort() / a failed operation ended it
  // before). kOpen until then.
  enum class Ending { kOpen, kFinalized, kAborted };
  // Ends the NCCL communicator now, as the destructor does; idempotent. Operations afterwards
  // throw as after abort(). Lets a caller (and the tests) see whether the end was clean.
  Ending close() noexcept;

  ncclComm* nccl_comm() const { return comm_; }
  CUstream_st* comm_stream() const { return stream_; }

 private:
  friend class NcclWork;
  NcclCommunicator(DeviceContext& device, TcpStore* store, ncclComm* comm, std::string name,
                   int rank, std::vector<int> world_ranks, const NcclOptions& options);

  template <typename Issue>
  CommHandle enqueue(const std::string& what, Issue&& issue);
  void check_usable(const std::string& what) const;
  void abort_nccl() noexcept;  // ncclCommAbort, if the communicator is still there; kAborted
  void check_tensor(CommOpKind kind, const Tensor& t) const;
  void set_device() const;
  // Polls ncclCommGetAsyncError until `comm` leaves ncclInProgress; throws past the deadline.
  void await_ready(ncclComm* comm, const std::string& what, uint64_t seq,
                   std::chrono::steady_clock::time_point deadline);
  // Blocks until `done` fired; aborts and throws on timeout, NCCL error or a dead member.
  void wait_event(CUevent_st* done, const std::string& what, uint64_t seq,
                  std::chrono::steady_clock::time_point deadline);
  [[noreturn]] void fail(const std::string& what, uint64_t seq, const std::string& cause);
  std::string dead_member() const;  // "world rank 3 (reason)" or "" (via the store)

  DeviceContext* device_;
  TcpStore* store_;  // may be null: then missing ranks cannot be named
  ncclComm* comm_;
  CUstream_st* stream_ = nullptr;
  int* scratch_ = nullptr;  // device: 2·size + 2 int32 for split's all_gather and barrier
  std::string name_;
  int rank_;
  std::vector<int> world_ranks_;
  std::chrono::milliseconds timeout_;
  bool use_side_stream_;
  uint64_t seq_ = 0;
  std::string abort_reason_;  // non-empty: aborted or closed, comm_ is gone
  Ending ending_ = Ending::kOpen;
};

}  // namespace shardlm::dist

#endif  // SHARDLM_WITH_CUDA
