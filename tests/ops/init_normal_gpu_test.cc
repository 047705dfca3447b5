// init_normal on the GPU equals the CPU bit for bit (fp32 and fp64, unsplit and TP-split
// shards, sizes that are not multiples of the block size, poisoned outputs), and a whole model's
// parameters initialised on the GPU equal the CPU's.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "shardlm/model/families/gpt_model.h"
#include "shardlm/model/parameter.h"
#include "shardlm/ops/ops.h"
#include "tests/testing/cuda_tensors.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

class InitNormalGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
  }
  std::unique_ptr<DeviceContext> gpu_;
  DeviceContext cpu_ = DeviceContext::cpu();
};

void expect_same_bits(const Tensor& cpu, const Tensor& gpu_on_host, const std::string& what) {
  ASSERT_EQ(cpu.nbytes(), gpu_on_host.nbytes()) << what;
  const int64_t n = cpu.numel();
  const size_t width = dtype_size(cpu.dtype());
  int64_t mismatches = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(static_cast<const char*>(cpu.raw()) + i * width,
                    static_cast<const char*>(gpu_on_host.raw()) + i * width, width) != 0) {
      if (first < 0) first = i;
      ++mismatches;
    }
  }
  EXPECT_EQ(mismatches, 0) << what << ": first differing element " << first;
}

TEST_F(InitNormalGpuTest, MatchesTheCpuBitForBit) {
  const PhiloxKey key = init_normal_key(1234, "decoder.layers.3.mlp.linear_fc1.weight");
  struct Case {
    const char* name;
    int64_t n;
    ShardIndexMap map;
  };
  // A [6, 8, 7] tensor split along dim 1 in 2 chunks over 2 ranks, rank 1: local [6, 4, 7].
  const ShardIndexMap split{.local_extent = 4, .global_extent = 8, .inner = 7, .chunk = 4,
                            .block = 2, .block_offset = 2};
  for (const Case& c : {Case{"identity, 1", 1, {}}, Case{"identity, 4097", 4097, {}},
                        Case{"identity, 3 000 001", 3000001, {}},
                        Case{"split rank 1 of 2, 2 chunks", 6 * 4 * 7, split}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(std::string(c.name) + " " + dtype_name(dt));
      OwnedTensor want = OwnedTensor::empty(dt, {c.n});
      ops::init_normal(cpu_, want.view(), key, 0.02, c.map);
      OwnedTensor got = testing::poisoned_device(dt, {c.n});
      ops::init_normal(*gpu_, got.view(), key, 0.02, c.map);
      expect_same_bits(want.view(), testing::to_host(*gpu_, got.view()).view(), "init_normal");
    }
  }
}

TEST_F(InitNormalGpuTest, ModelParametersEqualTheCpuModel) {
  model::TransformerConfig cfg;
  cfg.num_layers = 2;
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 4;
  cfg.seq_length = 16;
  cfg.vocab_size = 1000;
  cfg.make_vocab_size_divisible_by = 128;
  auto values = [&](DeviceContext& ctx) {
    model::GPTModel model(cfg);
    model::ParameterRegistry reg;
    model.register_parameters(reg);
    reg.finalize(ctx, DType::kF32, 77);
    if (ctx.device().is_cpu()) return testing::to_vector(reg.flat_values());
    return testing::to_vector(testing::to_host(ctx, reg.flat_values()).view());
  };
  const std::vector<double> cpu = values(cpu_), gpu = values(*gpu_);
  ASSERT_EQ(cpu.size(), gpu.size());
  EXPECT_EQ(cpu, gpu);
  double abs_sum = 0;
  for (double v : cpu) abs_sum += std::abs(v);
  EXPECT_GT(abs_sum, 0.0);
}

}  // namespace
}  // namespace shardlm
