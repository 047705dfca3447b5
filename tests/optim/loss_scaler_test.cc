// LossScaler against a step-by-step transcription of Megatron's DynamicGradScaler.update and
// ConstantGradScaler, on random overflow sequences, plus config validation.
#include "shardlm/optim/loss_scaler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "shardlm/base/error.h"

namespace shardlm::optim {
namespace {

// Megatron-LM megatron/core/optimizer/grad_scaler.py, DynamicGradScaler.update, transcribed.
struct MegatronDynamicScaler {
  double scale, min_scale, growth = 2.0, backoff = 0.5;
  int64_t window, hysteresis, growth_tracker = 0, hysteresis_tracker;
  MegatronDynamicScaler(double init, double min, int64_t w, int64_t h)
      : scale(init), min_scale(min), window(w), hysteresis(h), hysteresis_tracker(h) {}
  void update(bool found_inf) {
    if (found_inf) {
      growth_tracker = 0;
      hysteresis_tracker -= 1;
      if (hysteresis_tracker <= 0) scale = std::max(scale * backoff, min_scale);
    } else {
      growth_tracker += 1;
      if (growth_tracker == window) {
        growth_tracker = 0;
        hysteresis_tracker = hysteresis;
        scale = scale * growth;
      }
    }
  }
};

TEST(LossScaler, DynamicMatchesMegatronOnRandomOverflowSequences) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t window = 1 + static_cast<int64_t>(rng() % 6);
    const int64_t hysteresis = 1 + static_cast<int64_t>(rng() % 3);
    const double init = std::ldexp(1.0, 4 + static_cast<int>(rng() % 20));
    LossScalerConfig cfg;
    cfg.initial_loss_scale = init;
    cfg.min_loss_scale = 4.0;
    cfg.loss_scale_window = window;
    cfg.hysteresis = hysteresis;
    LossScaler ours(cfg);
    MegatronDynamicScaler ref(init, 4.0, window, hysteresis);
    ASSERT_TRUE(ours.dynamic());
    for (int step = 0; step < 200; ++step) {
      const bool overflow = (rng() % 3) == 0;
      ours.update(overflow);
      ref.update(overflow);
      ASSERT_EQ(ours.scale(), ref.scale) << "trial " << trial << " step " << step;
      ASSERT_EQ(ours.state().growth_tracker, ref.growth_tracker);
      ASSERT_EQ(ours.state().hysteresis_tracker, ref.hysteresis_tracker);
    }
  }
}

TEST(LossScaler, OverflowLowersTheScaleAfterHysteresisAndNeverBelowTheMinimum) {
  LossScalerConfig cfg;
  cfg.initial_loss_scale = 1024;
  cfg.min_loss_scale = 256;
  cfg.hysteresis = 2;
  LossScaler s(cfg);
  s.update(true);
  EXPECT_EQ(s.scale(), 1024);  // first overflow only uses up hysteresis
  s.update(true);
  EXPECT_EQ(s.scale(), 512);
  s.update(true);
  EXPECT_EQ(s.scale(), 256);
  s.update(true);
  EXPECT_EQ(s.scale(), 256);  // clamped at --min-loss-scale
}

TEST(LossScaler, GrowsAfterAWindowOfGoodSteps) {
  LossScalerConfig cfg;
  cfg.initial_loss_scale = 8;
  cfg.loss_scale_window = 3;
  LossScaler s(cfg);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 8);
  s.update(false);
  EXPECT_EQ(s.scale(), 16);
}

TEST(LossScaler, ConstantScaleNeverChanges) {
  LossScalerConfig cfg;
  cfg.loss_scale = 128;
  LossScaler s(cfg);
  EXPECT_FALSE(s.dynamic());
  for (bool overflow : {true, true, false, true}) s.update(overflow);
  EXPECT_EQ(s.scale(), 128);
}

TEST(LossScaler, BadFlagsAreNamed) {
  auto message = [](LossScalerConfig cfg) {
    try {
      LossScaler s(cfg);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      return std::string(e.what());
    }
    return std::string();
  };
  LossScalerConfig c;
  c.min_loss_scale = 0;
  EXPECT_NE(message(c).find("--min-loss-scale"), std::string::npos);
  c = {};
  c.loss_scale_window = 0;
  EXPECT_NE(message(c).find("--loss-scale-window"), std::string::npos);
  c = {};
  c.loss_scale = -1;
  EXPECT_NE(message(c).find("--loss-scale"), std::string::npos);
  c = {};
  c.initial_loss_scale = 1;
  c.min_loss_scale = 2;
  EXPECT_NE(message(c).find("at most --initial-loss-scale"), std::string::npos);
}

}  // namespace
}  // namespace shardlm::optim
