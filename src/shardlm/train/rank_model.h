// RankModel: one rank's share of the model before anything is allocated: its chunks (layers by
// global index, as the pipeline partition gives them), their parameters registered and laid out
// in the data-parallel flat buffers, and from those the rank's MemoryPlan.
//
// The Trainer builds its model with it and then allocates. The layout planner
// (plan/layout_planner.h) builds one per candidate layout and pipeline stage on shape-only
// communicators (dist/shape_only_communicator.h), so the memory it predicts is the plan the
// trainer will check and allocate, by construction.
//
//   RankModel m = build_rank_model(cfg, layout, coord.pp, tp, pipeline ? &*pipeline : nullptr);
//   MemoryPlan plan = plan_rank_memory(cfg, layout, m, /*cuda=*/true);
//
// Nothing here allocates device memory or communicates; registry.finalize() comes later.
#pragma once

#include <memory>
#include <vector>

#include "shardlm/dist/parallel_layout.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/model/parameter.h"
#include "shardlm/model/tensor_parallel.h"
#include "shardlm/parallel/grad_buffer.h"
#include "shardlm/parallel/pipeline_plan.h"
#include "shardlm/train/memory_plan.h"
#include "shardlm/train/train_config.h"

namespace shardlm::train {

// The dtype of master weights, main gradients and optimizer state (fp64 on the CPU with
// --compute-dtype fp64 or --main-params-dtype fp64, else fp32).
DType master_dtype_of(const TrainConfig& cfg);
// The dtype modules compute in: bf16 / fp16 under --bf16 / --fp16, else --compute-dtype.
DType compute_dtype_of(const TrainConfig& cfg);

struct RankModel {
  model::ParameterRegistry registry;                      // registered, flat layout applied
  std::vector<std::unique_ptr<model::GPTModel>> chunks;  // [V] this rank's model chunks
  parallel::GradBuffer grad_buffer;                       // the data-parallel buckets
};

// cfg: checked and resolved as the Trainer does it (vocabulary size known, data_parallel_size
// and model.tensor_model_parallel_size set from the layout). pipeline: the plan when
// layout.pp() > 1, else null (one chunk with the whole model and one activation slot). tp / cp:
// this rank's tensor- and context-parallel groups (cp.size() == layout.cp()); their communicators
// must outlive the returned chunks. ep: the expert-parallel group (ep.size() == layout.ep()).
// Gradients are bucketed for the data x context group; under expert parallelism the experts'
// in buckets of their own for the expert-data-parallel group.
RankModel build_rank_model(const TrainConfig& cfg, const dist::ParallelLayout& layout, int pp_rank,
                           const model::TensorParallel& tp, const parallel::PipelinePlan* pipeline,
                           const model::ContextParallel& cp = {},
                           const model::ExpertParallel& ep = {});

// Bytes the rank will allocate, by category (memory_plan.h); `cuda` adds the CUDA workspace.
MemoryPlan plan_rank_memory(const TrainConfig& cfg, const dist::ParallelLayout& layout,
                            const RankModel& model, bool cuda);

}  // namespace shardlm::train
