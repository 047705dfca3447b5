// PipelinePlan: partition + micro-batches + schedule from Megatron's flags.
#include "shardlm/parallel/pipeline_plan.h"

namespace shardlm::parallel {

PipelinePlan make_pipeline_plan(const PipelinePlanConfig& c, const ScheduleRegistry& registry) {
  PipelinePartition partition = PipelinePartition::create(c.partition);
  const int M = num_microbatches(c.global_batch_size, c.micro_batch_size, c.data_parallel_size);
  const std::string name =
      c.schedule.empty() ? default_schedule_name(partition.num_chunks()) : c.schedule;
  PipelineSchedule schedule = registry.generate(
      name, {partition.num_stages(), partition.num_chunks(), M});
  validate_schedule(schedule);
  return {std::move(partition), M, std::move(schedule)};
}

}  // namespace shardlm::parallel
