// AdamW over the parameter registry's flat buffers: moments live in two flat buffers laid out
// exactly like the parameters, and each maximal run of parameters with the same weight-decay
// flag is updated with one ops::adamw_step call (no decay on biases and norm weights). With a
// mixed-precision compute copy (--bf16 / --fp16) the same call also writes the run's updated
// compute values, so the registry needs no sync_compute_values() after a step.
//
//   AdamW opt(reg, {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1});
//   opt.step(ctx, lr);   // uses and then advances the step counter
#pragma once

#include <cstdint>
#include <vector>

#include "shardlm/model/parameter.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::optim {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

class AdamW {
 public:
  AdamW(model::ParameterRegistry& reg, const AdamWConfig& cfg);
  // grad_scale: the gradient clipping factor, applied inside the step (ops::AdamWParams).
  void step(DeviceContext& ctx, double lr, double grad_scale = 1.0);
  int64_t steps_taken() const { return steps_; }
  // Checkpoint restore (ckpt): the step counter; the moments are written through exp_avg() /
  // exp_avg_sq(), views laid out like the registry's flat value buffer.
  void set_steps_taken(int64_t steps) { steps_ = steps; }
  const Tensor& exp_avg() const { return exp_avg_.view(); }
  const Tensor& exp_avg_sq() const { return exp_avg_sq_.view(); }

 private:
  struct Range {
    int64_t offset, numel;
    bool decay;
  };
  model::ParameterRegistry& reg_;
  AdamWConfig cfg_;
  OwnedTensor exp_avg_, exp_avg_sq_;
  std::vector<Range> ranges_;
  int64_t steps_ = 0;
};

}  // namespace shardlm::optim
