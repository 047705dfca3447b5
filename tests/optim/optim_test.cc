// LR schedule against Megatron's formulas, AdamW against a float64 re-derivation, clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "shardlm/optim/adamw.h"
#include "shardlm/optim/grad_clip.h"
#include "shardlm/optim/lr_schedule.h"
#include "shardlm/ops/ops.h"
#include "tests/testing/tensors.h"

namespace shardlm::optim {
namespace {

TEST(LearningRateSchedule, WarmupThenLinearDecay) {
  LearningRateSchedule s({1.0, 0.1, LrDecayStyle::kLinear, 10, 110});
  EXPECT_EQ(s.lr_at(0), 0.0);  // Megatron: first warmup iteration trains with lr 0
  EXPECT_DOUBLE_EQ(s.lr_at(5), 0.5);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1.0);
  EXPECT_DOUBLE_EQ(s.lr_at(60), 0.1 + 0.9 * 0.5);
  EXPECT_DOUBLE_EQ(s.lr_at(110), 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(500), 0.1);
}

TEST(LearningRateSchedule, CosineAndConstant) {
  LearningRateSchedule cosine({2.0, 0.0, LrDecayStyle::kCosine, 0, 100});
  EXPECT_DOUBLE_EQ(cosine.lr_at(0), 2.0);
  EXPECT_NEAR(cosine.lr_at(25), 2.0 * 0.5 * (std::cos(std::numbers::pi * 0.25) + 1), 1e-15);
  EXPECT_NEAR(cosine.lr_at(100), 0.0, 1e-15);
  LearningRateSchedule constant({3.0, 0.0, LrDecayStyle::kConstant, 4, 0});
  EXPECT_DOUBLE_EQ(constant.lr_at(2), 1.5);
  EXPECT_DOUBLE_EQ(constant.lr_at(1000), 3.0);
}

TEST(LearningRateSchedule, RejectsInconsistentSettings) {
  EXPECT_THROW(LearningRateSchedule({1.0, 2.0, LrDecayStyle::kLinear, 0, 10}), Error);
  EXPECT_THROW(LearningRateSchedule({1.0, 0.0, LrDecayStyle::kLinear, 10, 10}), Error);
  EXPECT_THROW(lr_decay_style_from_name("exponential"), Error);
}

model::ParameterRegistry make_registry() {
  model::ParameterRegistry reg;
  reg.add({"w", {3, 2}, model::Split::none(), true, model::Init::normal(1.0)});
  reg.add({"b", {2}, model::Split::none(), false, model::Init::normal(1.0)});
  reg.add({"w2", {4}, model::Split::none(), true, model::Init::normal(1.0)});
  DeviceContext init_ctx = DeviceContext::cpu();
  reg.finalize(init_ctx, DType::kF64, 3);
  return reg;
}

TEST(AdamW, MatchesReferenceAndSkipsDecayWhereFlagged) {
  model::ParameterRegistry reg = make_registry();
  DeviceContext ctx = DeviceContext::cpu();
  const AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  AdamW opt(reg, cfg);
  std::vector<double> p = testing::to_vector(reg.flat_values());
  std::vector<double> m(p.size(), 0), v(p.size(), 0);
  std::vector<bool> decay = {1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  for (int step = 1; step <= 3; ++step) {
    OwnedTensor g = testing::random_tensor(DType::kF64, {12}, 100 + step);
    ops::copy(ctx, reg.flat_grads(), g.view());
    const auto gv = testing::to_vector(g.view());
    const double lr = 0.01 * step;
    opt.step(ctx, lr);
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = 0.9 * m[i] + 0.1 * gv[i];
      v[i] = 0.95 * v[i] + 0.05 * gv[i] * gv[i];
      const double mh = m[i] / (1 - std::pow(0.9, step)), vh = v[i] / (1 - std::pow(0.95, step));
      p[i] -= lr * (mh / (std::sqrt(vh) + 1e-8) + (decay[i] ? 0.1 : 0.0) * p[i]);
    }
  }
  EXPECT_LT(testing::rel_error(testing::to_vector(reg.flat_values()), p), 1e-14);
  EXPECT_EQ(opt.steps_taken(), 3);
}

// With a bf16 compute copy the step writes it too: after each step the compute values are the
// rounded master values without a sync_compute_values(), and the master values are the same
// bits as a registry without a compute copy gets.
TEST(AdamW, WritesTheComputeCopyInTheStep) {
  DeviceContext ctx = DeviceContext::cpu();
  auto make = [&](DType compute) {
    model::ParameterRegistry reg;
    reg.add({"w", {3, 5}, model::Split::none(), true, model::Init::normal(1.0)});
    reg.add({"b", {5}, model::Split::none(), false, model::Init::normal(1.0)});
    reg.add({"w2", {9}, model::Split::none(), true, model::Init::normal(1.0)});
    reg.finalize(ctx, DType::kF32, 4, compute);
    return reg;
  };
  model::ParameterRegistry mixed = make(DType::kBF16), plain = make(DType::kF32);
  ASSERT_TRUE(mixed.has_compute_copy());
  ASSERT_FALSE(plain.has_compute_copy());
  const AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  AdamW opt_mixed(mixed, cfg), opt_plain(plain, cfg);
  for (int step = 1; step <= 3; ++step) {
    OwnedTensor g = testing::random_tensor(DType::kF32, {mixed.numel()}, 50 + step);
    ops::copy(ctx, mixed.flat_grads(), g.view());
    ops::copy(ctx, plain.flat_grads(), g.view());
    opt_mixed.step(ctx, 0.05);
    opt_plain.step(ctx, 0.05);
    const std::vector<double> master = testing::to_vector(mixed.flat_values());
    EXPECT_EQ(master, testing::to_vector(plain.flat_values())) << "step " << step;
    const std::vector<double> compute = testing::to_vector(mixed.flat_compute_values());
    for (size_t i = 0; i < master.size(); ++i)
      ASSERT_EQ(compute[i], bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(master[i]))))
          << "step " << step << " element " << i;
  }
}

TEST(GradClip, NormAndScaling) {
  model::ParameterRegistry reg = make_registry();
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor g = testing::random_tensor(DType::kF64, {12}, 9);
  ops::copy(ctx, reg.flat_grads(), g.view());
  const auto gv = testing::to_vector(g.view());
  double sq = 0;
  for (double x : gv) sq += x * x;
  EXPECT_NEAR(global_grad_norm(ctx, reg), std::sqrt(sq), 1e-12);
  // No clipping above the norm.
  EXPECT_NEAR(clip_grad_norm(ctx, reg, 1e6), std::sqrt(sq), 1e-12);
  EXPECT_EQ(testing::to_vector(reg.flat_grads()), gv);
  // Clipping to 0.5 leaves a norm of 0.5 (up to Megatron's 1e-6 guard).
  clip_grad_norm(ctx, reg, 0.5);
  EXPECT_NEAR(global_grad_norm(ctx, reg), 0.5, 1e-6);
}

}  // namespace
}  // namespace shardlm::optim
