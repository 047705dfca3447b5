// Checkpoints of GPU runs: device -> host snapshot and host -> device load. A GPU run saved at
// iteration 6 (asynchronously) and resumed by a new GPU trainer follows the straight 12-iteration
// GPU run; the same checkpoint loads into a CPU trainer with exactly the GPU's master weights;
// a --bf16 run's checkpoint holds its fp32 master weights; with the distributed optimizer those
// are sharded (all of them on one GPU) and the checkpoint is the same as plain AdamW's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "ckpt_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
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

// --bf16 --use-distributed-optimizer: the optimizer holds the fp32 master weights (the registry
// frees its copy) and writes its bf16 compute weights; on one GPU it owns every element, so
// losses and every checkpoint tensor equal plain AdamW's bit for bit (no clipping: the two sum
// the norm in different orders), and a resume from its checkpoint follows the straight run.
TEST(CheckpointGpu, Bf16DistributedOptimizerHoldsTheMasterWeights) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig base = gpu_config();
  base.bf16 = true;
  base.optimizer.clip_grad = 0;
  auto run = [](TrainConfig c, std::string* log_out = nullptr) {
    std::ostringstream log;
    Trainer t(c, log);
    t.train();
    if (c.parallel.use_distributed_optimizer) EXPECT_FALSE(t.parameters().has_master_values());
    if (log_out) *log_out = log.str();
    std::vector<double> losses;
    for (const auto& h : t.history()) losses.push_back(h.loss);
    return losses;
  };
  TempDir plain_dir, sharded_dir;
  TrainConfig plain = base;
  plain.checkpoint.save = plain_dir.str();
  plain.checkpoint.exit_interval = 6;
  TrainConfig sharded = plain;
  sharded.checkpoint.save = sharded_dir.str();
  sharded.parallel.use_distributed_optimizer = true;
  const std::vector<double> a = run(plain);
  std::string log;
  const std::vector<double> b = run(sharded, &log);
  EXPECT_NE(log.find("> master weights (fp32) on this rank"), std::string::npos) << log;
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a, b);
  ckpt::CheckpointReader ra(plain_dir.str(), 6), rb(sharded_dir.str(), 6);
  DeviceContext cpu = DeviceContext::cpu();
  int compared = 0;
  for (auto it = ra.metadata()["tensors"].begin(); it != ra.metadata()["tensors"].end(); ++it) {
    const Shape shape = ra.global_shape(it.key());
    ASSERT_EQ(rb.global_shape(it.key()), shape) << it.key();
    OwnedTensor x = OwnedTensor::empty(DType::kF32, shape), y = OwnedTensor::empty(DType::kF32, shape);
    ra.read(cpu, {it.key(), shape, ckpt::ShardRegion::whole(shape), x.view(), true});
    rb.read(cpu, {it.key(), shape, ckpt::ShardRegion::whole(shape), y.view(), true});
    EXPECT_EQ(std::memcmp(x.view().raw(), y.view().raw(), x.view().nbytes()), 0) << it.key();
    ++compared;
  }
  EXPECT_GT(compared, 20);
  TrainConfig straight = base;
  straight.parallel.use_distributed_optimizer = true;
  const std::vector<double> whole = run(straight);
  TrainConfig resume = straight;
  resume.checkpoint.load = sharded_dir.str();
  const std::vector<double> rest = run(resume);
  ASSERT_EQ(whole.size(), 12u);
  ASSERT_EQ(rest.size(), 6u);
  for (int i = 0; i < 6; ++i)
    EXPECT_NEAR(rest[i], whole[6 + i], 1e-5 * whole[6 + i]) << "iteration " << 7 + i;
}

}  // namespace
}  // namespace shardlm::train
