#include "shardlm/optim/grad_clip.h"

#include <algorithm>
#include <cmath>

#include "shardlm/ops/ops.h"

namespace shardlm::optim {

double global_grad_norm(DeviceContext& ctx, const model::ParameterRegistry& reg,
                        const GradNormScope& scope) {
  double sum = 0;
  for (const model::Parameter& p : reg.parameters()) {
    // Replicated-over-TP parameters are identical on every TP rank: count them on rank 0.
    if (!p.spec.split.is_split() && (scope.tp_rank != 0 || p.spec.split.tp_rank != 0)) continue;
    if (scope.owned.empty()) {
      sum += ops::sum_squares(ctx, p.grad);
      continue;
    }
    const int64_t begin = p.offset, end = p.offset + p.local_shape.numel();
    for (const BucketRange& r : scope.owned) {
      const int64_t lo = std::max(begin, r.begin), hi = std::min(end, r.end);
      if (lo < hi) sum += ops::sum_squares(ctx, reg.flat_grads().flat_view(lo, Shape({hi - lo})));
    }
  }
  if (scope.sum_group && scope.sum_group->size() > 1) {
    OwnedTensor host = OwnedTensor::empty(DType::kF64, {1});
    host.view().data<double>()[0] = sum;
    if (ctx.device().is_cpu()) {
      scope.sum_group->all_reduce(host.view());
    } else {  // NCCL reduces device memory
      OwnedTensor dev = OwnedTensor::empty(DType::kF64, {1}, ctx.device());
      ops::copy(ctx, dev.view(), host.view());
      scope.sum_group->all_reduce(dev.view());
      ops::copy(ctx, host.view(), dev.view());
    }
    sum = host.view().data<double>()[0];
  }
  return std::sqrt(sum);
}

double clip_grad_norm(DeviceContext& ctx, model::ParameterRegistry& reg, double clip,
                      const GradNormScope& scope) {
  const double norm = global_grad_norm(ctx, reg, scope);
  if (clip > 0 && std::isfinite(norm)) {
    const double coeff = clip / (norm + 1e-6);
    if (coeff < 1.0) ops::scale_inplace(ctx, reg.flat_grads(), coeff);
  }
  return norm;
}

}  // namespace shardlm::optim
