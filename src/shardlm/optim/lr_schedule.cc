#include "shardlm/optim/lr_schedule.h"

#include <cmath>
#include <numbers>

#include "shardlm/base/error.h"

namespace shardlm::optim {

LrDecayStyle lr_decay_style_from_name(const std::string& name) {
  if (name == "constant") return LrDecayStyle::kConstant;
  if (name == "linear") return LrDecayStyle::kLinear;
  if (name == "cosine") return LrDecayStyle::kCosine;
  throw Error(ErrorKind::kInvalidConfig,
              "--lr-decay-style '" + name + "' is not supported; use constant, linear or cosine");
}

const char* lr_decay_style_name(LrDecayStyle style) {
  switch (style) {
    case LrDecayStyle::kConstant: return "constant";
    case LrDecayStyle::kLinear: return "linear";
    case LrDecayStyle::kCosine: return "cosine";
  }
  return "?";
}

LearningRateSchedule::LearningRateSchedule(const LrScheduleConfig& cfg) : cfg_(cfg) {
  if (cfg_.max_lr < 0 || cfg_.min_lr < 0)
    throw Error(ErrorKind::kInvalidConfig, "--lr and --min-lr must not be negative");
  if (cfg_.min_lr > cfg_.max_lr)
    throw Error(ErrorKind::kInvalidConfig,
                "--min-lr " + std::to_string(cfg_.min_lr) + " is larger than --lr " +
                    std::to_string(cfg_.max_lr));
  if (cfg_.warmup_steps < 0)
    throw Error(ErrorKind::kInvalidConfig, "--lr-warmup-iters must not be negative");
  if (cfg_.decay_style != LrDecayStyle::kConstant && cfg_.decay_steps <= cfg_.warmup_steps)
    throw Error(ErrorKind::kInvalidConfig,
                "learning-rate decay iterations " + std::to_string(cfg_.decay_steps) +
                    " (--lr-decay-iters, default --train-iters) must exceed the warmup "
                    "iterations " + std::to_string(cfg_.warmup_steps) +
                    " (--lr-warmup-iters or --lr-warmup-fraction); shorten the warmup");
}

double LearningRateSchedule::lr_at(int64_t steps) const {
  if (cfg_.warmup_steps > 0 && steps <= cfg_.warmup_steps)
    return cfg_.max_lr * static_cast<double>(steps) / static_cast<double>(cfg_.warmup_steps);
  if (cfg_.decay_style == LrDecayStyle::kConstant) return cfg_.max_lr;
  if (steps > cfg_.decay_steps) return cfg_.min_lr;
  const double ratio = static_cast<double>(steps - cfg_.warmup_steps) /
                       static_cast<double>(cfg_.decay_steps - cfg_.warmup_steps);
  const double delta = cfg_.max_lr - cfg_.min_lr;
  const double coeff = cfg_.decay_style == LrDecayStyle::kLinear
                           ? 1.0 - ratio
                           : 0.5 * (std::cos(std::numbers::pi * ratio) + 1.0);
  return cfg_.min_lr + coeff * delta;
}

}  // namespace shardlm::optim
