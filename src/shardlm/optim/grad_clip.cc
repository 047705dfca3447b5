#include "shardlm/optim/grad_clip.h"

#include <cmath>

#include "shardlm/ops/ops.h"

namespace shardlm::optim {

double global_grad_norm(DeviceContext& ctx, const model::ParameterRegistry& reg) {
  double sum = 0;
  for (const model::Parameter& p : reg.parameters()) {
    // Replicated-over-TP parameters are counted on TP rank 0 only (identical on every rank).
    if (!p.spec.split.is_split() && p.spec.split.tp_rank != 0) continue;
    sum += ops::sum_squares(ctx, p.grad);
  }
  return std::sqrt(sum);
}

double clip_grad_norm(DeviceContext& ctx, model::ParameterRegistry& reg, double clip) {
  const double norm = global_grad_norm(ctx, reg);
  if (clip > 0 && std::isfinite(norm)) {
    const double coeff = clip / (norm + 1e-6);
    if (coeff < 1.0) ops::scale_inplace(ctx, reg.flat_grads(), coeff);
  }
  return norm;
}

}  // namespace shardlm::optim
