// PipelineP2P: schedule transfers -> batch_send_recv_async on the activation / gradient channel.
#include "shardlm/parallel/p2p.h"

#include <vector>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::parallel {

PipelineP2P PipelineP2P::create(dist::Communicator& pp) {
  auto act = pp.split(0, pp.rank(), pp.name() + ".pipeline-activations");
  auto grad = pp.split(0, pp.rank(), pp.name() + ".pipeline-gradients");
  return PipelineP2P(std::move(act), std::move(grad));
}

PipelineP2P::PipelineP2P(std::unique_ptr<dist::Communicator> activations,
                         std::unique_ptr<dist::Communicator> gradients)
    : activations_(std::move(activations)), gradients_(std::move(gradients)) {
  SHARDLM_CHECK(activations_ != nullptr && gradients_ != nullptr);
  if (activations_->size() != gradients_->size() || activations_->rank() != gradients_->rank()) {
    throw Error(ErrorKind::kInvalidArgument,
                "PipelineP2P: the activation channel '" + activations_->name() + "' (rank " +
                    std::to_string(activations_->rank()) + " of " +
                    std::to_string(activations_->size()) + ") and the gradient channel '" +
                    gradients_->name() + "' (rank " + std::to_string(gradients_->rank()) +
                    " of " + std::to_string(gradients_->size()) +
                    ") must span the same pipeline ranks in the same order");
  }
}

PostedBatch PipelineP2P::post(std::span<const Transfer> transfers, int num_chunks) {
  const int P = num_stages(), r = rank();
  std::vector<dist::P2POp> act_ops, grad_ops;
  for (const Transfer& t : transfers) {
    SHARDLM_CHECK(t.action.is_transfer());
    auto peer = transfer_peer(t.action, r, P, num_chunks);
    if (!peer) {
      throw Error(ErrorKind::kInternal, "PipelineP2P: " + format_action(t.action) + " on rank " +
                                            std::to_string(r) + " has no peer (P=" +
                                            std::to_string(P) + ", V=" +
                                            std::to_string(num_chunks) + ")");
    }
    dist::P2POp op{t.action.is_send() ? dist::P2POp::Kind::kSend : dist::P2POp::Kind::kRecv,
                   t.tensor, peer->rank};
    (t.action.is_activation_transfer() ? act_ops : grad_ops).push_back(op);
  }
  PostedBatch out;
  if (!act_ops.empty()) {
    out.activations =
        std::make_shared<dist::CommHandle>(activations_->batch_send_recv_async(act_ops));
  }
  if (!grad_ops.empty()) {
    out.gradients =
        std::make_shared<dist::CommHandle>(gradients_->batch_send_recv_async(grad_ops));
  }
  return out;
}

void PipelineP2P::connect(DeviceContext& device) {
  const int P = num_stages(), r = rank();
  if (P == 1) return;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  // [0, 1): sent to both; [1, 3): received from next and prev.
  OwnedTensor buf = OwnedTensor::zeros(DType::kI32, {3}, device.device());
  const Tensor out = buf.view().flat_view(0, Shape({1}));
  const std::vector<dist::P2POp> ops{
      {dist::P2POp::Kind::kSend, out, next},
      {dist::P2POp::Kind::kSend, out, prev},
      {dist::P2POp::Kind::kRecv, buf.view().flat_view(1, Shape({1})), next},
      {dist::P2POp::Kind::kRecv, buf.view().flat_view(2, Shape({1})), prev}};
  for (dist::Communicator* channel : {activations_.get(), gradients_.get()})
    channel->batch_send_recv(ops);
}

void PipelineP2P::abort(const std::string& reason) {
  activations_->abort(reason);
  gradients_->abort(reason);
}

}  // namespace shardlm::parallel
