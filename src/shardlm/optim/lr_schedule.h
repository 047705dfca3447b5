// LearningRateSchedule: Megatron's OptimizerParamScheduler (learning-rate part), in iterations.
//
//   warmup (steps <= warmup):  lr = max_lr * steps / warmup        (linear from 0)
//   decay  (warmup < steps <= decay_steps):
//       ratio = (steps - warmup) / (decay_steps - warmup)
//       constant: max_lr; linear: min + (max - min)(1 - ratio); cosine: min + (max - min)·½(1+cos(π·ratio))
//   after decay_steps: min_lr
// As in Megatron, iteration i (1-based) trains with lr(i - 1), so the first warmup step uses 0.
#pragma once

#include <cstdint>
#include <string>

namespace shardlm::optim {

enum class LrDecayStyle { kConstant, kLinear, kCosine };
LrDecayStyle lr_decay_style_from_name(const std::string& name);  // throws kInvalidConfig
const char* lr_decay_style_name(LrDecayStyle style);

struct LrScheduleConfig {
  double max_lr = 1e-4;
  double min_lr = 0.0;
  LrDecayStyle decay_style = LrDecayStyle::kLinear;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;  // iterations over which to decay (Megatron: --lr-decay-iters)
};

class LearningRateSchedule {
 public:
  explicit LearningRateSchedule(const LrScheduleConfig& cfg);
  // lr after `steps` completed optimizer steps.
  double lr_at(int64_t steps) const;

 private:
  LrScheduleConfig cfg_;
};

}  // namespace shardlm::optim
