// Global-norm gradient clipping over a parameter registry, as Megatron's clip_grad_norm:
//   norm = sqrt(sum over parameters of sum(g^2));  if clip > 0 and clip/(norm+1e-6) < 1,
//   every gradient is scaled by clip/(norm+1e-6).
// Only one replica of each tensor-parallel-duplicated parameter is counted (Split metadata), so
// the norm is layout-independent once a communicator sums it across ranks.
#pragma once

#include "shardlm/model/parameter.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::optim {

double global_grad_norm(DeviceContext& ctx, const model::ParameterRegistry& reg);
// Returns the norm before clipping. clip <= 0 disables clipping.
double clip_grad_norm(DeviceContext& ctx, model::ParameterRegistry& reg, double clip);

}  // namespace shardlm::optim
