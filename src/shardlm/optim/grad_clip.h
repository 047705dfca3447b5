// Global-norm gradient clipping over a parameter registry, as Megatron's clip_grad_norm:
//   norm = sqrt(sum over parameters of sum(g^2));  if clip > 0 and clip/(norm+1e-6) < 1,
//   every gradient is scaled by clip/(norm+1e-6).
// Each parameter element is counted exactly once over the whole job (GradNormScope):
//  - tensor-parallel-split parameters: every TP rank holds a disjoint part, all counted, but
//    for rows another rank owns too (replicated query groups' k/v: Parameter::replica_ranges);
//  - parameters replicated over TP: counted on TP rank 0 only (Megatron's
//    param_is_not_tensor_parallel_duplicate);
//  - the last pipeline stage's copy of the tied word embedding (PipelineTie::kCopy): never
//    (the first stage counts the same gradient);
//  - with the distributed optimizer: only this rank's owned shards of the flat buffer (their
//    gradients are the reduce-scattered ones; the rest of the buffer is stale);
//  - expert parallelism without the distributed optimizer: the dense parameters on
//    data-parallel rank 0 and the experts' on expert-data-parallel rank 0 (count_dense /
//    count_expert), summed over every rank;
// and the partial sums of squares are summed over `sum_group`: the model-parallel group
// (tp × pp), or every rank (tp × dp × pp) with the distributed optimizer. Every rank of the
// group gets the same norm, so all take the same skip / clip decision.
//
//   GradNormScope scope{.tp_rank = rc.coord().tp, .sum_group = &rc.tp()};
//   double norm = clip_grad_norm(ctx, reg, cfg.clip_grad, scope);
#pragma once

#include <span>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/parameter.h"
#include "shardlm/optim/distributed_optimizer.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::optim {

struct GradNormScope {
  int tp_rank = 0;                          // this rank's tensor-parallel rank
  std::span<const BucketRange> owned = {};  // empty: whole parameters; else only these ranges
  dist::Communicator* sum_group = nullptr;  // null: this rank holds everything
  bool count_dense = true;                  // parameters without ParameterSpec::expert
  bool count_expert = true;                 // parameters with it
};

double global_grad_norm(DeviceContext& ctx, const model::ParameterRegistry& reg,
                        const GradNormScope& scope = {});
// The norm and the factor clip_grad_norm would scale the gradients by (min(1, clip / (norm +
// 1e-6)); 1 when clip <= 0 or the norm is not finite), without writing anything: the trainer
// passes the factor to the optimizer step (ops::AdamWParams::grad_scale), which saves a pass
// over the fp32 gradients with the same bits.
struct GradClip {
  double norm = 0;
  double coeff = 1;
};
GradClip grad_clip(DeviceContext& ctx, const model::ParameterRegistry& reg, double clip,
                   const GradNormScope& scope = {});
// Scales the gradients by that factor; returns the norm before clipping. clip <= 0 disables
// clipping.
double clip_grad_norm(DeviceContext& ctx, model::ParameterRegistry& reg, double clip,
                      const GradNormScope& scope = {});

}  // namespace shardlm::optim
