// ExpertParallel: the expert-model-parallel group a mixture-of-experts model runs in
// (--expert-model-parallel-size, RankContext's kEp group). Its ranks are data-parallel for the
// dense layers (different tokens); each holds num_experts / EP of every MoE layer's experts
// (rank r: experts [r·E/EP, (r+1)·E/EP)), and the tokens travel to their experts' rank and back
// by all-to-all (layers/moe_mlp.h). Value type; the group is not owned.
#pragma once

#include "shardlm/dist/communicator.h"
#include "shardlm/dist/rank_context.h"

namespace shardlm::model {

struct ExpertParallel {
  dist::Communicator* group = nullptr;  // the EP group; null: EP = 1

  // The EP group of `rc` (not owned: rc must outlive the model); {} when EP = 1.
  static ExpertParallel of(const dist::RankContext& rc) {
    return rc.layout().ep() > 1 ? ExpertParallel{&rc.ep()} : ExpertParallel{};
  }

  int rank() const { return group ? group->rank() : 0; }
  int size() const { return group ? group->size() : 1; }
  bool enabled() const { return size() > 1; }
};

}  // namespace shardlm::model
