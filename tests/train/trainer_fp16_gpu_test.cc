// --fp16 on the GPU: fp16 compute with dynamic loss scaling and fp32 master weights. A forced
// overflow (a loss scale far beyond fp16's range) skips the step, leaves the parameters
// untouched and lowers the scale; with a sane scale the run tracks the fp32 CPU reference.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "shardlm/ops/ops.h"
#include "shardlm/tensor/device.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

TrainConfig tiny_fp16_config() {
  TrainConfig cfg;
  cfg.model.num_layers = 2;
  cfg.model.hidden_size = 64;
  cfg.model.num_attention_heads = 4;
  cfg.model.seq_length = 32;
  cfg.model.vocab_size = 200;
  cfg.model.hidden_dropout = 0.0;
  cfg.model.attention_dropout = 0.0;
  cfg.micro_batch_size = 4;
  cfg.global_batch_size = 8;
  cfg.train_iters = 5;
  cfg.optimizer.lr = 1e-3;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.data.mock_data = true;
  cfg.logging.eval_iters = 0;
  cfg.logging.log_interval = 1;
  cfg.device = "cuda";
  cfg.fp16 = true;
  return cfg;
}

std::vector<float> master_values(Trainer& t) {
  const Tensor& flat = t.parameters().flat_values();
  OwnedTensor host = OwnedTensor::empty(DType::kF32, flat.shape());
  ops::copy(t.device(), host.view(), flat);
  const float* p = host.view().data<float>();
  return std::vector<float>(p, p + flat.numel());
}

TEST(TrainerFp16Gpu, ForcedOverflowSkipsTheStepAndLowersTheScale) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_fp16_config();
  cfg.loss_scaler.initial_loss_scale = std::ldexp(1.0, 40);  // fp16 max is 65504
  cfg.loss_scaler.hysteresis = 1;
  std::ostringstream log;
  Trainer t(cfg, log);
  EXPECT_NE(log.str().find("> precision: fp16 mixed precision"), std::string::npos) << log.str();
  const std::vector<float> before = master_values(t);
  const IterationRecord r = t.train_step();
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.grad_norm));
  EXPECT_EQ(r.loss_scale, std::ldexp(1.0, 40));
  EXPECT_EQ(master_values(t), before) << "a skipped step must not touch the parameters";
  const IterationRecord r2 = t.train_step();
  EXPECT_EQ(r2.loss_scale, std::ldexp(1.0, 39)) << "the overflow must halve the scale";
}

TEST(TrainerFp16Gpu, TracksTheFp32CpuRunWithDynamicScaling) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_fp16_config();
  cfg.loss_scaler.initial_loss_scale = 1024;
  std::ostringstream log_cpu, log_gpu;
  Trainer gpu(cfg, log_gpu);
  cfg.device = "cpu";
  cfg.fp16 = false;
  Trainer cpu(cfg, log_cpu);
  for (int i = 0; i < 5; ++i) {
    const IterationRecord a = cpu.train_step();
    const IterationRecord b = gpu.train_step();
    ASSERT_FALSE(b.skipped) << "iteration " << i + 1;
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * std::abs(a.loss)) << "iteration " << i + 1;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 5e-2 * std::abs(a.grad_norm)) << "iteration " << i + 1;
  }
}

TEST(TrainerFp16Gpu, LogLineShowsTheLossScaleAndSkippedSteps) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig cfg = tiny_fp16_config();
  cfg.loss_scaler.initial_loss_scale = std::ldexp(1.0, 40);
  cfg.loss_scaler.hysteresis = 1;
  cfg.train_iters = 2;
  std::ostringstream log;
  Trainer t(cfg, log);
  t.train();
  EXPECT_NE(log.str().find("loss scale:"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("number of skipped iterations:   2"), std::string::npos) << log.str();
}

}  // namespace
}  // namespace shardlm::train
