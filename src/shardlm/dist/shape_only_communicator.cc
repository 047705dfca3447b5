#include "shardlm/dist/shape_only_communicator.h"

#include <numeric>

#include "shardlm/base/error.h"

namespace shardlm::dist {

ShapeOnlyCommunicator::ShapeOnlyCommunicator(std::string name, int rank, int size)
    : name_(std::move(name)), rank_(rank), size_(size), world_ranks_(static_cast<size_t>(size)) {
  SHARDLM_CHECK(size >= 1 && rank >= 0 && rank < size);
  std::iota(world_ranks_.begin(), world_ranks_.end(), 0);
}

void ShapeOnlyCommunicator::refuse(CommOpKind kind) const {
  throw Error(ErrorKind::kInternal,
              std::string(comm_op_name(kind)) + " on the shape-only group '" + name_ +
                  "': a model being planned must not communicate");
}

CommHandle ShapeOnlyCommunicator::all_reduce_async(Tensor, ReduceOp) {
  refuse(CommOpKind::kAllReduce);
}
CommHandle ShapeOnlyCommunicator::reduce_scatter_async(Tensor, const Tensor&, ReduceOp) {
  refuse(CommOpKind::kReduceScatter);
}
CommHandle ShapeOnlyCommunicator::all_gather_async(Tensor, const Tensor&) {
  refuse(CommOpKind::kAllGather);
}
CommHandle ShapeOnlyCommunicator::broadcast_async(Tensor, int) { refuse(CommOpKind::kBroadcast); }
CommHandle ShapeOnlyCommunicator::send_async(const Tensor&, int) { refuse(CommOpKind::kSend); }
CommHandle ShapeOnlyCommunicator::recv_async(Tensor, int) { refuse(CommOpKind::kRecv); }
CommHandle ShapeOnlyCommunicator::batch_send_recv_async(std::span<const P2POp>) {
  refuse(CommOpKind::kSend);
}
CommHandle ShapeOnlyCommunicator::barrier_async() { refuse(CommOpKind::kBarrier); }
std::unique_ptr<Communicator> ShapeOnlyCommunicator::split(int, int, const std::string&) {
  refuse(CommOpKind::kSplit);
}

}  // namespace shardlm::dist
