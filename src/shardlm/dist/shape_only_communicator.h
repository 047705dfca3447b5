// ShapeOnlyCommunicator: a group with a rank and a size and nobody behind them. Models are built
// on it to learn their shapes without a job: the layout planner (plan/layout_planner.h) builds
// every pipeline stage of a candidate layout this way, registering parameters and planning
// activations, which only ask the group for rank() and size(). Every operation throws
// Error(kInternal), so a model that tries to communicate while being planned fails loudly
// instead of hanging.
//
// Thread contract: immutable after construction.
//
//   ShapeOnlyCommunicator tp("tp", /*rank=*/0, /*size=*/4);
//   model::TensorParallel shape{.group = &tp, .sequence_parallel = true};
#pragma once

#include <string>
#include <vector>

#include "shardlm/dist/communicator.h"

namespace shardlm::dist {

class ShapeOnlyCommunicator final : public Communicator {
 public:
  ShapeOnlyCommunicator(std::string name, int rank, int size);

  const std::string& name() const override { return name_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  std::chrono::milliseconds timeout() const override { return kDefaultCommTimeout; }
  void set_timeout(std::chrono::milliseconds) override {}

  CommHandle all_reduce_async(Tensor t, ReduceOp op) override;
  CommHandle reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) override;
  CommHandle all_gather_async(Tensor out, const Tensor& in) override;
  CommHandle broadcast_async(Tensor t, int root) override;
  CommHandle send_async(const Tensor& t, int peer) override;
  CommHandle recv_async(Tensor t, int peer) override;
  CommHandle batch_send_recv_async(std::span<const P2POp> ops) override;
  CommHandle barrier_async() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;
  void abort(const std::string&) override {}

 private:
  [[noreturn]] void refuse(CommOpKind kind) const;

  std::string name_;
  int rank_, size_;
  std::vector<int> world_ranks_;  // 0 .. size-1: there is no world behind the group
};

}  // namespace shardlm::dist
