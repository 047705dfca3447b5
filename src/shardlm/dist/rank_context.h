// RankContext: everything parallel code needs about "who am I and whom do I talk to" — the
// rank's DeviceContext, its world rank / size / local rank, the ParallelLayout, and one named
// Communicator per parallel dimension (tp, cp, dp, pp, dp_cp, tp_cp, tp_dp_cp, model_parallel,
// embedding, position_embedding, ep, expert_tp, expert_dp, expert_tp_ep). DESIGN §8.5:
// anything parallel takes RankContext&; there is no parallel_state global.
//
// create() is collective over the world communicator: every rank calls it with the same
// layout, and it splits the world once per GroupKind (in kAllGroupKinds order), coloured by the
// rank's group index and keyed by its position in the member list, so group rank == position
// in ParallelLayout::group_of(). Ranks outside a group (embedding groups on middle pipeline
// stages) have no communicator for it: has_group() is false and group() throws.
//
// Thread contract: owned and used by its rank's thread. Ownership: owns the communicators;
// holds the DeviceContext by reference (caller keeps it alive) or owns it (the overload taking
// a unique_ptr). Move-only.
//
//   ParallelLayout layout = ParallelLayout::create(8, {.tensor = 2, .pipeline = 2});
//   ThreadWorld world(8);
//   // on rank r's thread:
//   DeviceContext device = DeviceContext::cpu();
//   RankContext rc = RankContext::create(device, world.communicator(r), layout, /*local=*/r);
//   rc.tp().all_reduce(partial_sum);        // reduce-from-tensor-parallel-region
//   if (rc.has_group(GroupKind::kEmbedding)) rc.embedding().all_reduce(tied_grad);
#pragma once

#include <array>
#include <memory>

#include "shardlm/dist/communicator.h"
#include "shardlm/dist/parallel_layout.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::dist {

class RankContext {
 public:
  static RankContext create(DeviceContext& device, std::unique_ptr<Communicator> world,
                            const ParallelLayout& layout, int local_rank = 0);
  static RankContext create(std::unique_ptr<DeviceContext> device,
                            std::unique_ptr<Communicator> world, const ParallelLayout& layout,
                            int local_rank = 0);

  RankContext(RankContext&&) noexcept = default;
  RankContext& operator=(RankContext&&) noexcept = default;

  DeviceContext& device() const { return *device_; }
  int world_rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int local_rank() const { return local_rank_; }
  const ParallelLayout& layout() const { return layout_; }
  const RankCoord& coord() const { return coord_; }

  Communicator& world() const { return *world_; }
  bool has_group(GroupKind kind) const { return groups_[static_cast<size_t>(kind)] != nullptr; }
  // Throws Error(kInvalidArgument) when this rank is not in a group of that kind.
  Communicator& group(GroupKind kind) const;

  Communicator& tp() const { return group(GroupKind::kTp); }
  Communicator& cp() const { return group(GroupKind::kCp); }
  Communicator& dp() const { return group(GroupKind::kDp); }
  Communicator& pp() const { return group(GroupKind::kPp); }
  Communicator& dp_cp() const { return group(GroupKind::kDpCp); }
  Communicator& model_parallel() const { return group(GroupKind::kModelParallel); }
  Communicator& embedding() const { return group(GroupKind::kEmbedding); }
  Communicator& ep() const { return group(GroupKind::kEp); }

  bool is_first_pipeline_stage() const { return coord_.pp == 0; }
  bool is_last_pipeline_stage() const { return coord_.pp == layout_.pp() - 1; }

 private:
  explicit RankContext(ParallelLayout layout) : layout_(std::move(layout)) {}
  static RankContext build(DeviceContext* device, std::unique_ptr<DeviceContext> owned,
                           std::unique_ptr<Communicator> world, const ParallelLayout& layout,
                           int local_rank);
  // One split of `world` per GroupKind into groups_ (collective over the world).
  void split_groups(Communicator& world);

  std::unique_ptr<DeviceContext> owned_device_;
  DeviceContext* device_ = nullptr;
  ParallelLayout layout_;
  RankCoord coord_;
  int local_rank_ = 0;
  std::unique_ptr<Communicator> world_;
  std::array<std::unique_ptr<Communicator>, kAllGroupKinds.size()> groups_;
};

}  // namespace shardlm::dist
