// Checkpoints of GPU runs: device -> host snapshot and host -> device load. A GPU run saved at
// iteration 6 (asynchronously) and resumed by a new GPU trainer follows the straight 12-iteration
// GPU run; the same checkpoint loads into a CPU trainer with exactly the GPU's master weights;
// a --bf16 run's checkpoint holds its fp32 master weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "ckpt_test_util.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/device.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

using ckpt::testing::TempDir;

TrainConfig gpu_config() {
  TrainConfig c;
  c.model.num_layers = 2;
  c.model.hidden_size = 64;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 32;
  c.model.vocab_size = 200;
  c.model.hidden_dropout = 0.1;
  c.model.attention_dropout = 0.1;
  c.micro_batch_size = 4;
  c.global_batch_size = 8;
  c.train_iters = 12;
  c.optimizer.lr = 1e-3;
  c.optimizer.lr_warmup_iters = 1;
  c.data.mock_data = true;
  c.logging.eval_iters = 0;
  c.device = "cuda";
  return c;
}

std::vector<float> host_values(Trainer& t) {
  const Tensor& v = t.parameters().flat_values();
  OwnedTensor host = OwnedTensor::empty(v.dtype(), v.shape());
  ops::copy(t.device(), host.view(), v);
  return std::vector<float>(host.view().data<float>(), host.view().data<float>() + v.numel());
}

TEST(CheckpointGpu, AsyncSaveResumeOnGpuAndLoadOnCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  std::ostringstream log;
  Trainer straight(gpu_config(), log);
  straight.train();
  TempDir dir;
  std::vector<float> saved;
  std::vector<IterationRecord> first;
  {
    TrainConfig c = gpu_config();
    c.checkpoint.save = dir.str();
    c.checkpoint.exit_interval = 6;
    c.checkpoint.async_save = true;
    Trainer t(c, log);
    t.train();
    first = t.history();
    saved = host_values(t);
  }
  TrainConfig c = gpu_config();
  c.checkpoint.load = dir.str();
  Trainer resumed(c, log);
  ASSERT_EQ(resumed.iteration(), 6);
  EXPECT_EQ(host_values(resumed), saved);  // exact fp32 round trip through the files
  resumed.train();
  std::vector<IterationRecord> all = first;
  all.insert(all.end(), resumed.history().begin(), resumed.history().end());
  ASSERT_EQ(all.size(), straight.history().size());
  for (size_t i = 0; i < all.size(); ++i)
    EXPECT_NEAR(all[i].loss, straight.history()[i].loss,
                1e-6 * std::abs(straight.history()[i].loss))
        << "iteration " << i + 1;
  // The GPU checkpoint in a CPU trainer: the same master weights, bit for bit.
  TrainConfig cpu = gpu_config();
  cpu.device = "cpu";
  cpu.checkpoint.load = dir.str();
  Trainer on_cpu(cpu, log);
  const Tensor& v = on_cpu.parameters().flat_values();
  ASSERT_EQ(static_cast<size_t>(v.numel()), saved.size());
  EXPECT_EQ(std::memcmp(v.raw(), saved.data(), saved.size() * 4), 0);
}

TEST(CheckpointGpu, Bf16RunSavesFp32MasterWeights) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TempDir dir;
  TrainConfig c = gpu_config();
  c.bf16 = true;
  c.train_iters = 3;
  c.checkpoint.save = dir.str();
  std::ostringstream log;
  Trainer t(c, log);
  t.train();
  const std::vector<float> master = host_values(t);
  TrainConfig cpu = gpu_config();
  cpu.device = "cpu";
  cpu.train_iters = 3;
  cpu.checkpoint.load = dir.str();
  Trainer on_cpu(cpu, log);
  EXPECT_EQ(on_cpu.iteration(), 3);
  EXPECT_EQ(std::memcmp(on_cpu.parameters().flat_values().raw(), master.data(),
                        master.size() * 4),
            0);
}

}  // namespace
}  // namespace shardlm::train
