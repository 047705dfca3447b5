#include "shardlm/optim/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "shardlm/base/error.h"

namespace shardlm::optim {

void LossScalerConfig::validate() const {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::kInvalidConfig, what); };
  if (loss_scale < 0 || !std::isfinite(loss_scale))
    bad("--loss-scale " + std::to_string(loss_scale) +
        " must be a positive number (a constant scale), or omitted for dynamic scaling");
  if (!(initial_loss_scale > 0) || !std::isfinite(initial_loss_scale))
    bad("--initial-loss-scale must be a positive finite number, got " +
        std::to_string(initial_loss_scale));
  if (!(min_loss_scale > 0) || min_loss_scale > initial_loss_scale)
    bad("--min-loss-scale " + std::to_string(min_loss_scale) +
        " must be positive and at most --initial-loss-scale " +
        std::to_string(initial_loss_scale));
  if (loss_scale_window < 1)
    bad("--loss-scale-window must be >= 1, got " + std::to_string(loss_scale_window));
  if (hysteresis < 1) bad("--hysteresis must be >= 1, got " + std::to_string(hysteresis));
}

LossScaler::LossScaler(const LossScalerConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  state_.scale = dynamic() ? cfg_.initial_loss_scale : cfg_.loss_scale;
  state_.hysteresis_tracker = cfg_.hysteresis;
}

void LossScaler::update(bool found_inf) {
  if (!dynamic()) return;
  if (found_inf) {
    state_.growth_tracker = 0;
    state_.hysteresis_tracker -= 1;
    if (state_.hysteresis_tracker <= 0)
      state_.scale = std::max(state_.scale * 0.5, cfg_.min_loss_scale);
    return;
  }
  state_.growth_tracker += 1;
  if (state_.growth_tracker == cfg_.loss_scale_window) {
    state_.growth_tracker = 0;
    state_.hysteresis_tracker = cfg_.hysteresis;
    state_.scale *= 2.0;
  }
}

}  // namespace shardlm::optim
