#include "shardlm/train/rank_model.h"

#include <algorithm>
#include <string>

#include "shardlm/base/check.h"

#include "shardlm/train/gpt_pipeline_stage.h"

namespace shardlm::train {

DType master_dtype_of(const TrainConfig& cfg) {
  return cfg.compute_dtype == "fp64" || cfg.main_params_dtype == "fp64" ? DType::kF64
                                                                        : DType::kF32;
}

DType compute_dtype_of(const TrainConfig& cfg) {
  return cfg.bf16                      ? DType::kBF16
         : cfg.fp16                    ? DType::kF16
         : cfg.compute_dtype == "fp64" ? DType::kF64
                                       : DType::kF32;
}

RankModel build_rank_model(const TrainConfig& cfg, const dist::ParallelLayout& layout, int pp_rank,
                           const model::TensorParallel& tp, const parallel::PipelinePlan* pipeline,
                           const model::ContextParallel& cp, const model::ExpertParallel& ep) {
  SHARDLM_REQUIRE(cp.size() == layout.cp(), ErrorKind::kInternal,
                  "build_rank_model: a context-parallel group of " + std::to_string(cp.size()) +
                      " ranks for a layout with CP " + std::to_string(layout.cp()));
  // --cp-comm-type reaches the layers through their context-parallel group.
  model::ContextParallel model_cp = cp;
  model_cp.all_to_all = cfg.parallel.cp_comm_type == "a2a";
  RankModel m;
  // Activation slots per chunk: the schedule's most micro-batches in flight on this rank.
  const int num_chunks = pipeline ? pipeline->partition.num_chunks() : 1;
  const std::vector<int> slots =
      pipeline ? GPTPipelineStage::slots_per_chunk(pipeline->schedule, pp_rank)
               : std::vector<int>{1};
  for (int c = 0; c < num_chunks; ++c) {
    model::ModelChunk chunk;
    if (pipeline) {
      const parallel::PipelinePartition& part = pipeline->partition;
      const parallel::LayerRange r = part.layers(pp_rank, c);
      chunk = {r.begin, r.end, part.has_embedding(pp_rank, c), part.has_output_layer(pp_rank, c)};
    }
    m.chunks.push_back(std::make_unique<model::GPTModel>(cfg.model, tp, chunk, model_cp, ep));
    m.chunks.back()->set_recompute(cfg.recompute);  // before the activation plan
    m.chunks.back()->set_activation_slots(slots[static_cast<size_t>(c)]);
    m.chunks.back()->register_parameters(m.registry);
  }
  // Lay the flat buffers out in data-parallel buckets (reverse order, padding for sharding):
  // gradients are reduced, and the distributed optimizer shards, over data x context ranks
  // (the experts' under expert parallelism over the expert-data-parallel ranks).
  m.grad_buffer = parallel::GradBuffer::plan(
      m.registry, {.data_parallel_size = layout.dp() * layout.cp(),
                   .bucket_size = cfg.parallel.ddp_bucket_size,
                   .overlap_grad_reduce = cfg.parallel.overlap_grad_reduce,
                   .use_distributed_optimizer = cfg.parallel.use_distributed_optimizer,
                   .expert_data_parallel_size = layout.ep() > 1 ? layout.edp() : 0});
  m.grad_buffer.apply(m.registry);
  m.registry.set_gradient_accumulation_fusion(cfg.gradient_accumulation_fusion);
  return m;
}

MemoryPlan plan_rank_memory(const TrainConfig& cfg, const dist::ParallelLayout& layout,
                            const RankModel& model, bool cuda) {
  const DType master = master_dtype_of(cfg), compute = compute_dtype_of(cfg);
  MemoryPlan plan;
  const size_t n_params = static_cast<size_t>(model.registry.numel());
  plan.master_params = n_params * dtype_size(master);
  plan.main_grads = plan.master_params;
  if (compute != master) {
    plan.compute_params = n_params * dtype_size(compute);
    // Without the fused parameters' gradients (gradient-accumulation fusion).
    plan.compute_grads = static_cast<size_t>(model.registry.compute_grad_numel()) *
                         dtype_size(compute);
  }
  plan.optimizer_state = 2 * plan.master_params;
  if (cfg.parallel.use_distributed_optimizer) {
    // Each rank holds 1/G of every bucket's moments, G its group's size (DP·CP, or the
    // expert-data-parallel size for the experts' buckets; the padded buckets split exactly) ...
    const parallel::GradBuffer& buf = model.grad_buffer;
    int64_t owned = 0;
    for (int b = 0; b < buf.num_buckets(); ++b)
      owned += buf.buckets()[static_cast<size_t>(b)].range.numel() / buf.group_size(b);
    plan.optimizer_state = 2 * static_cast<size_t>(owned) * dtype_size(master);
    // ... and, under mixed precision, of the master weights.
    if (compute != master) plan.master_params = static_cast<size_t>(owned) * dtype_size(master);
  }
  for (const auto& chunk : model.chunks)
    plan.activations += chunk->plan_activation_bytes(compute, cfg.micro_batch_size);
  if (cuda) {
    const int64_t tp = layout.tp();
    plan.workspace = cuda_workspace_estimate(
        cfg.micro_batch_size,
        std::max(cfg.model.seq_length, cfg.model.t5() ? cfg.model.decoder_seq_length : 0) /
            layout.cp(),
        cfg.model.num_attention_heads / tp,
        std::max<int64_t>(1, cfg.model.query_groups() / tp), cfg.model.head_dim(),
        dtype_size(compute));
  }
  return plan;
}

}  // namespace shardlm::train
