// PipelinePlan: everything a trainer needs to run pipeline parallelism, derived from
// Megatron's flags in one validated step — the layer partition, the micro-batch count and the
// schedule (--pipeline-schedule, defaulting to Megatron's choice).
//
// Thread contract: value type. Errors: every invalid combination throws Error(kInvalidConfig)
// from the component that owns the rule (PipelinePartition, num_microbatches, the generator).
//
//   PipelinePlan plan = make_pipeline_plan({.partition = {.num_layers = 24,
//       .pipeline_parallel_size = 4, .num_layers_per_virtual_stage = 3},
//       .global_batch_size = 64, .micro_batch_size = 2, .data_parallel_size = 2});
//   plan.schedule.name;                 // "interleaved-1f1b" (V = 2, M = 16)
//   plan.partition.layers(rank, chunk);
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/parallel/pipeline_partition.h"
#include "shardlm/parallel/schedule.h"
#include "shardlm/parallel/schedule_registry.h"

namespace shardlm::parallel {

struct PipelinePlanConfig {
  PipelinePartitionConfig partition;
  int64_t global_batch_size = 1;   // --global-batch-size
  int64_t micro_batch_size = 1;    // --micro-batch-size
  int64_t data_parallel_size = 1;  // derived from the layout
  std::string schedule;            // --pipeline-schedule ("" = 1f1b, or interleaved-1f1b if V > 1)
};

struct PipelinePlan {
  PipelinePartition partition;
  int num_microbatches = 1;
  PipelineSchedule schedule;
};

PipelinePlan make_pipeline_plan(const PipelinePlanConfig& config,
                                const ScheduleRegistry& registry = ScheduleRegistry::builtin());

}  // namespace shardlm::parallel
