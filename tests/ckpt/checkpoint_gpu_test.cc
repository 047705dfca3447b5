// Checkpoints of GPU runs: device -> host snapshot and host -> device load. A GPU run saved at
// iteration 6 (asynchronously) and resumed by a new GPU trainer follows the straight 12-iteration
// GPU run; the same checkpoint loads into a CPU trainer with exactly the GPU's master weights;
// a --bf16 run's checkpoint holds its fp32 master weights, also when the distributed optimizer
// holds them (sharded; all of them on one GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "ckpt_test_util.h"
#include "tests/testing/cuda_tensors.h"
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
// frees its copy) and writes the bf16 compute weights. Checked without comparing two trainings
// (bf16 GPU runs are not bit-reproducible): the checkpoint's fp32 master weights round to
// exactly the trainer's bf16 compute weights; a trainer resumed from it starts with those very
// compute weights; and it trains on like the run it continues (bf16 tolerance).
TEST(CheckpointGpu, Bf16DistributedOptimizerHoldsTheMasterWeights) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  TrainConfig c = gpu_config();
  c.bf16 = true;
  c.parallel.use_distributed_optimizer = true;
  TempDir dir;
  c.checkpoint.save = dir.str();
  c.checkpoint.exit_interval = 6;
  // Each parameter's bf16 compute weights, as raw bits, by name.
  auto compute_bits = [](Trainer& t) {
    std::map<std::string, std::vector<uint16_t>> out;
    for (const model::Parameter& p : t.parameters().parameters()) {
      const OwnedTensor host = testing::to_host(t.device(), p.compute_value);
      const auto* bits = static_cast<const uint16_t*>(host.view().raw());
      out[p.spec.name].assign(bits, bits + host.view().numel());
    }
    return out;
  };
  std::ostringstream log;
  Trainer first(c, log);
  first.train();
  EXPECT_FALSE(first.parameters().has_master_values());
  EXPECT_NE(log.str().find("> master weights (fp32) on this rank"), std::string::npos)
      << log.str();
  const auto trained = compute_bits(first);
  ckpt::CheckpointReader reader(dir.str(), 6);
  DeviceContext cpu = DeviceContext::cpu();
  for (const model::Parameter& p : first.parameters().parameters()) {
    const std::string key = "model/" + p.spec.name;
    const Shape shape = reader.global_shape(key);
    OwnedTensor master = OwnedTensor::empty(DType::kF32, shape);
    reader.read(cpu, {key, shape, ckpt::ShardRegion::whole(shape), master.view(), true});
    const float* m = master.view().data<float>();
    const std::vector<uint16_t>& want = trained.at(p.spec.name);
    ASSERT_EQ(static_cast<size_t>(master.view().numel()), want.size()) << key;
    size_t mismatches = 0;
    for (size_t i = 0; i < want.size(); ++i) mismatches += float_to_bf16_bits(m[i]) != want[i];
    EXPECT_EQ(mismatches, 0u) << key;
  }
  TrainConfig resume = c;
  resume.checkpoint.save.clear();
  resume.checkpoint.exit_interval = 0;
  resume.checkpoint.load = dir.str();
  Trainer resumed(resume, log);
  ASSERT_EQ(resumed.iteration(), 6);
  EXPECT_EQ(compute_bits(resumed), trained);
  resumed.train();
  TrainConfig straight = c;
  straight.checkpoint.save.clear();
  straight.checkpoint.exit_interval = 0;
  Trainer whole(straight, log);
  whole.train();
  ASSERT_EQ(resumed.history().size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const double want = whole.history()[6 + i].loss;
    EXPECT_NEAR(resumed.history()[i].loss, want, 2e-3 * want) << "iteration " << 7 + i;
  }
}

}  // namespace
}  // namespace shardlm::train
