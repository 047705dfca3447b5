// LossScaler: fp16 loss scaling as Megatron does it (--fp16). The loss is multiplied by scale()
// before backward so small fp16 gradients do not flush to zero; the main (fp32) gradients are
// divided by it before clipping and the optimizer step. A step whose gradients hold inf/NaN is
// skipped (parameters untouched) and the scaler told so.
//
//  - Constant (--loss-scale S): scale() == S forever; overflowing steps are still skipped.
//  - Dynamic (default with --fp16), Megatron's DynamicGradScaler: starts at
//    --initial-loss-scale (2^32); an overflow decrements a hysteresis counter and, once it
//    reaches zero (--hysteresis overflows, 2 by default), halves the scale (never below
//    --min-loss-scale, 1.0); --loss-scale-window (1000) consecutive good steps double it and
//    restore the hysteresis counter.
//
// Plain value type; the state (scale, growth and hysteresis trackers) is what a checkpoint saves.
//
//   LossScaler scaler(LossScalerConfig{});              // dynamic
//   model.backward(..., scaler.scale() / num_microbatches);
//   const bool overflow = !all_finite(grads);
//   if (!overflow) { unscale grads by 1/scaler.scale(); optimizer step; }
//   scaler.update(overflow);
#pragma once

#include <cstdint>

namespace shardlm::optim {

struct LossScalerConfig {
  double loss_scale = 0;               // > 0: constant scale (--loss-scale); 0: dynamic
  double initial_loss_scale = 4294967296.0;  // 2^32 (--initial-loss-scale)
  double min_loss_scale = 1.0;         // --min-loss-scale
  int64_t loss_scale_window = 1000;    // --loss-scale-window
  int64_t hysteresis = 2;              // --hysteresis
  // Throws Error(kInvalidConfig) naming the flag.
  void validate() const;
};

struct LossScalerState {
  double scale = 1.0;
  int64_t growth_tracker = 0;      // consecutive steps without overflow
  int64_t hysteresis_tracker = 0;  // overflows left before the scale is lowered
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerConfig& cfg);

  double scale() const { return state_.scale; }
  bool dynamic() const { return cfg_.loss_scale <= 0; }
  // Records one step's outcome (found_inf: some gradient was inf or NaN).
  void update(bool found_inf);

  const LossScalerState& state() const { return state_; }
  void set_state(const LossScalerState& state) { state_ = state; }

 private:
  LossScalerConfig cfg_;
  LossScalerState state_;
};

}  // namespace shardlm::optim
