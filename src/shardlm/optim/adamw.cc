#include "shardlm/optim/adamw.h"

#include <algorithm>

#include "shardlm/ops/ops.h"

namespace shardlm::optim {

AdamW::AdamW(model::ParameterRegistry& reg, const AdamWConfig& cfg) : reg_(reg), cfg_(cfg) {
  SHARDLM_CHECK(reg.finalized());
  const Tensor& values = reg.flat_values();
  exp_avg_ = OwnedTensor::zeros(values.dtype(), values.shape(), values.device());
  exp_avg_sq_ = OwnedTensor::zeros(values.dtype(), values.shape(), values.device());
  // In flat-buffer order (the grad buffer lays parameters out in reverse registration order).
  std::vector<const model::Parameter*> by_offset;
  for (const model::Parameter& p : reg.parameters()) by_offset.push_back(&p);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const model::Parameter* a, const model::Parameter* b) { return a->offset < b->offset; });
  for (const model::Parameter* param : by_offset) {
    const model::Parameter& p = *param;
    const int64_t n = p.local_shape.numel();
    if (!ranges_.empty() && ranges_.back().decay == p.spec.weight_decay &&
        ranges_.back().offset + ranges_.back().numel == p.offset) {
      ranges_.back().numel += n;
    } else {
      ranges_.push_back({p.offset, n, p.spec.weight_decay});
    }
  }
}

void AdamW::step(DeviceContext& ctx, double lr, double grad_scale) {
  ++steps_;
  const Tensor& compute = reg_.flat_compute_values();  // undefined without a compute copy
  for (const Range& r : ranges_) {
    ops::AdamWParams hp{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, r.decay ? cfg_.weight_decay : 0.0,
                        steps_, grad_scale};
    const Shape shape{r.numel};
    ops::adamw_step(ctx, reg_.flat_values().flat_view(r.offset, shape),
                    reg_.flat_grads().flat_view(r.offset, shape),
                    exp_avg_.view().flat_view(r.offset, shape),
                    exp_avg_sq_.view().flat_view(r.offset, shape), hp,
                    compute.defined() ? compute.flat_view(r.offset, shape) : Tensor());
  }
}

}  // namespace shardlm::optim
