// HostStagedCommunicator: a host-memory Communicator (a ThreadWorld rank) made usable with
// device tensors by staging every device buffer through host memory. With it, N ranks as N
// threads each drive their own DeviceContext on ONE GPU, so the GPU code paths of every
// parallel layout (vocab-parallel kernels, sequence-parallel exchanges, bf16 buckets, the
// distributed optimizer's gathers, pipeline sends) are checked against the one-rank run on a
// single-GPU machine. Wrapped around the socket communicator it is also `--distributed-backend
// gloo` (cli/distributed_run.cc): GPU ranks that share GPUs. Slow by design: every staging copy
// synchronises the rank's stream, so nothing overlaps with compute.
//
// How an operation runs: at issue, each device input is copied to a host buffer (ops::copy,
// which finishes the rank's queued work first); the host operation runs on those buffers; at
// wait(), each host output is copied back into its device tensor on the rank's stream. Host
// tensors pass through unstaged (unless `stage_host_tensors`, which stages them too so the
// staging itself is testable without a GPU). Semantics, deadlines and errors are the wrapped
// communicator's; outputs may alias inputs as before (inputs are read at issue, or at wait()
// with `defer_collectives`).
//
// Thread contract: as every Communicator, one rank's thread. Ownership: owns the wrapped
// communicator; the DeviceContext must outlive it; pending handles own their host buffers.
//
//   ThreadWorld world(2);
//   world.run([&](Communicator& comm) {
//     DeviceContext gpu(Device::cuda(0));  // each thread: own stream and handles
//     HostStagedCommunicator staged(gpu, comm.split(0, comm.rank(), "world"));
//     ...                                 // RankContext::create(gpu, ...), Trainer(cfg, rc, ...)
//   });
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::dist {

struct HostStagedOptions {
  bool stage_host_tensors = false;  // stage host tensors as well (tests of the staging)
  // Collectives (not send/recv: a deferred send would stall its receiver) are issued only when
  // wait() is called: their inputs are read as late as the contract allows, so a caller that
  // changes an input before wait() — a race on an NCCL side stream — gets wrong results here
  // instead of passing by luck. Issue order becomes wait order, so every rank must wait for a
  // group's operations in one order, and a handle dropped without wait() is never issued (its
  // peers time out); both hold for the trainer (tests/train/layout_equivalence_test.cc).
  bool defer_collectives = false;
};

class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(DeviceContext& device, std::unique_ptr<Communicator> host,
                         HostStagedOptions options = {});

  const std::string& name() const override { return host_->name(); }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::vector<int>& world_ranks() const override { return host_->world_ranks(); }
  std::chrono::milliseconds timeout() const override { return host_->timeout(); }
  void set_timeout(std::chrono::milliseconds timeout) override { host_->set_timeout(timeout); }

  CommHandle all_reduce_async(Tensor t, ReduceOp op = ReduceOp::kSum) override;
  CommHandle reduce_scatter_async(Tensor out, const Tensor& in,
                                  ReduceOp op = ReduceOp::kSum) override;
  CommHandle all_gather_async(Tensor out, const Tensor& in) override;
  CommHandle broadcast_async(Tensor t, int root) override;
  CommHandle send_async(const Tensor& t, int peer) override;
  CommHandle recv_async(Tensor t, int peer) override;
  CommHandle batch_send_recv_async(std::span<const P2POp> ops) override;
  CommHandle barrier_async() override { return host_->barrier_async(); }
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;
  void abort(const std::string& reason) override { host_->abort(reason); }

 private:
  class Staging;
  bool staged(const Tensor& t) const;

  DeviceContext* device_;
  std::unique_ptr<Communicator> host_;
  HostStagedOptions options_;
};

}  // namespace shardlm::dist
