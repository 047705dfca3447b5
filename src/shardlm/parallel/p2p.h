// PipelineP2P: the point-to-point channels of one pipeline rank — one communicator for
// activations (forward direction) and one for gradients (backward direction), both over the
// pipeline group, so each channel is FIFO per (from, to) without the two kinds of traffic
// having to agree on an order (with V > 1 and P == 2 both would flow between the same two
// ranks in the same direction). On NCCL each communicator has its own stream, so activation
// and gradient transfers overlap each other and the compute stream.
//
// post() issues one batch of a schedule (a run of transfer actions, schedule.h) as at most two
// batch_send_recv_async calls, one per channel, and returns their handles; transfers are
// never serialised one by one.
//
// Thread contract: one rank's thread. Ownership: owns the two communicators; the tensors
// passed to post() must stay alive and untouched until the returned handles are waited.
//
//   PipelineP2P p2p = PipelineP2P::create(rank_context.pp());   // collective over pp
//   PostedBatch b = p2p.post({{send_action, out}, {recv_action, in}}, /*num_chunks=*/2);
//   b.activations->wait();
#pragma once

#include <memory>
#include <span>
#include <string>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/parallel/schedule.h"

namespace shardlm::parallel {

// One transfer action with the tensor it sends from or receives into.
struct Transfer {
  Action action;
  Tensor tensor;
};

// Handles of one posted batch; null where the batch had nothing on that channel. Shared so
// every receive of the batch can wait on it (CommHandle::wait is a no-op once done).
struct PostedBatch {
  std::shared_ptr<dist::CommHandle> activations;
  std::shared_ptr<dist::CommHandle> gradients;
};

class PipelineP2P {
 public:
  // Collective over `pp` (every member calls it, in the same order as its other splits):
  // splits "<pp>.pipeline-activations" and "<pp>.pipeline-gradients" from it.
  static PipelineP2P create(dist::Communicator& pp);
  // Two existing communicators of the same ranks (group rank == pipeline stage).
  PipelineP2P(std::unique_ptr<dist::Communicator> activations,
              std::unique_ptr<dist::Communicator> gradients);

  int rank() const { return activations_->rank(); }
  int num_stages() const { return activations_->size(); }
  dist::Communicator& activations() const { return *activations_; }
  dist::Communicator& gradients() const { return *gradients_; }

  // Posts the transfers (all must be transfer actions with a peer); see the header comment.
  PostedBatch post(std::span<const Transfer> transfers, int num_chunks);

  // Collective over the pipeline group: one symmetric exchange with both neighbours on each
  // channel, in tensors on `device`. NCCL (>= 2.22) connects peers lazily on first use, and a
  // first send whose peer is busy elsewhere would block the host until it posts the match;
  // here every rank connects everything at once, so the schedule's first transfers never wait
  // on a connection. A no-op for one stage.
  void connect(DeviceContext& device);

  // Aborts both channels (peers' pending transfers fail fast); used when this rank fails.
  void abort(const std::string& reason);

 private:
  std::unique_ptr<dist::Communicator> activations_;
  std::unique_ptr<dist::Communicator> gradients_;
};

}  // namespace shardlm::parallel
