#include "shardlm/dist/rank_context.h"

#include <algorithm>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::dist {

RankContext RankContext::create(DeviceContext& device, std::unique_ptr<Communicator> world,
                                const ParallelLayout& layout, int local_rank) {
  return build(&device, nullptr, std::move(world), layout, local_rank);
}

RankContext RankContext::create(std::unique_ptr<DeviceContext> device,
                                std::unique_ptr<Communicator> world,
                                const ParallelLayout& layout, int local_rank) {
  SHARDLM_CHECK(device != nullptr);
  DeviceContext* raw = device.get();
  return build(raw, std::move(device), std::move(world), layout, local_rank);
}

RankContext RankContext::build(DeviceContext* device, std::unique_ptr<DeviceContext> owned,
                               std::unique_ptr<Communicator> world,
                               const ParallelLayout& layout, int local_rank) {
  SHARDLM_CHECK(world != nullptr);
  if (world->size() != layout.world_size()) {
    throw Error(ErrorKind::kInvalidConfig,
                "the parallel layout (" + layout.describe() + ") is for " +
                    std::to_string(layout.world_size()) + " ranks but the job has " +
                    std::to_string(world->size()) + " (WORLD_SIZE). Fix: launch " +
                    std::to_string(layout.world_size()) + " ranks or change the parallel sizes.");
  }
  RankContext rc(layout);
  rc.owned_device_ = std::move(owned);
  rc.device_ = device;
  rc.local_rank_ = local_rank;
  const int rank = world->rank();
  rc.coord_ = layout.coord(rank);
  // Owned by rc from here: on a failure its members go in reverse order, the communicators
  // before the DeviceContext they hold.
  rc.world_ = std::move(world);
  try {
    rc.split_groups(*rc.world_);
  } catch (const std::exception& e) {
    // A peer died or hung while the groups were being split: abort what exists (peers waiting
    // on these groups fail fast; NCCL communicators are aborted, not destroyed with work
    // pending), the world last, before they are destroyed with this frame.
    const std::string reason = "world rank " + std::to_string(rank) +
                               " failed while creating its process groups: " + e.what();
    for (auto& g : rc.groups_)
      if (g) g->abort(reason);
    rc.world_->abort(reason);
    throw;
  }
  return rc;
}

void RankContext::split_groups(Communicator& world) {
  const int rank = world.rank();
  for (GroupKind kind : kAllGroupKinds) {
    const int color = layout_.group_index(kind, rank);
    const auto& members = layout_.group_of(kind, rank);
    const int key = color < 0 ? 0
                              : static_cast<int>(std::find(members.begin(), members.end(), rank) -
                                                 members.begin());
    auto comm = world.split(color < 0 ? kNoColor : color, key, group_kind_name(kind));
    if (comm) {
      // Group rank order must be the layout's member order (parallel code relies on it).
      std::vector<int> expected;
      for (int m : members) expected.push_back(world.world_ranks()[m]);
      SHARDLM_CHECK(comm->world_ranks() == expected);
      SHARDLM_CHECK_EQ(comm->rank(), key);
    }
    groups_[static_cast<size_t>(kind)] = std::move(comm);
  }
}

Communicator& RankContext::group(GroupKind kind) const {
  const auto& g = groups_[static_cast<size_t>(kind)];
  if (!g) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("world rank ") + std::to_string(world_->rank()) +
                    " is not a member of any '" + group_kind_name(kind) +
                    "' group in this layout (" + layout_.describe() +
                    "); check has_group() first");
  }
  return *g;
}

}  // namespace shardlm::dist
