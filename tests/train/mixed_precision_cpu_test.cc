// Mixed precision on the CPU (--main-params-dtype fp64: fp32 compute weights and activations,
// fp64 master weights, main gradients and Adam moments): the code paths of --bf16 on a GPU
// (compute copies, gradient folds and fusion, the distributed optimizer's sharded master
// weights and its all-gather of compute weights, checkpoints of sharded master weights), run
// where every layout fits in one process. Ranks are threads.
//  - every layout trains like one mixed-precision rank (1e-5, as the fp32 layout tests);
//  - DP=2 with the distributed optimizer is bit-identical to DP=2 with plain AdamW (losses,
//    compute weights, and every tensor of the checkpoints both save; without clipping, whose
//    norm the two sum in different orders);
//  - a checkpoint of sharded master weights resumes bit-exactly in the same layout and within
//    1e-5 in others (one rank, TP=2 x DP=2);
//  - gradient-accumulation fusion covers the word embedding (no compute gradient; tied or not),
//    and --no-gradient-accumulation-fusion trains within 1e-6 of it.
#include <gtest/gtest.h>

#include <sstream>

#include "tests/ckpt/ckpt_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using namespace layout_harness;
using ckpt::testing::TempDir;

TrainConfig mixed_config() {
  TrainConfig c = tiny_config();
  c.main_params_dtype = "fp64";
  return c;
}

// For bit-for-bit comparisons of the two optimizers: the sharded one sums the squared gradient
// norm shard by shard, in another order than the unsharded one (the norms agree to ~1e-16), so
// a clipping coefficient would differ in its last bit.
TrainConfig mixed_unclipped() {
  TrainConfig c = mixed_config();
  c.optimizer.clip_grad = 0;
  return c;
}

TEST(MixedPrecisionCpu, ComputesInFp32WithFp64MasterWeights) {
  std::string log;
  const RunResult mixed = run_layout(mixed_config(), Layout{}, &log);
  EXPECT_NE(log.find("> precision: fp32 compute, fp64 master weights and gradients"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("compute parameters"), std::string::npos) << log;  // a separate copy
  // Close to fp32 and to fp64 training, equal to neither (the compute rounding is real).
  const RunResult fp32 = single_rank(tiny_config());
  TrainConfig all64 = tiny_config();
  all64.compute_dtype = "fp64";
  const RunResult fp64 = single_rank(all64);
  ASSERT_EQ(mixed.losses.size(), fp32.losses.size());
  bool differs32 = false, differs64 = false;
  for (size_t i = 0; i < mixed.losses.size(); ++i) {
    EXPECT_LT(std::abs(mixed.losses[i] - fp64.losses[i]), 1e-4 * fp64.losses[i]) << i;
    differs32 |= mixed.losses[i] != fp32.losses[i];
    differs64 |= mixed.losses[i] != fp64.losses[i];
  }
  EXPECT_TRUE(differs32 && differs64);
  EXPECT_LT(mixed.losses.back(), mixed.losses.front() - 0.3);
}

TEST(MixedPrecisionCpu, RejectsTheGpuAndOtherPrecisions) {
  TrainConfig c = mixed_config();
  c.bf16 = true;
  c.device = "cuda";
  EXPECT_NE(config_error([c] { c.validate(); }).find("--main-params-dtype fp64 is the CPU's"),
            std::string::npos);
  c = mixed_config();
  c.compute_dtype = "fp64";
  EXPECT_NE(config_error([c] { c.validate(); }).find("--compute-dtype fp32"), std::string::npos);
  c = mixed_config();
  c.main_params_dtype = "fp16";
  EXPECT_NE(config_error([c] { c.validate(); }).find("is not one of fp32, fp64"),
            std::string::npos);
}

// The word embedding is fused like the linear weights: its lookup's scatter-add (and the tied
// output GEMM) writes the fp64 master gradient, so it has no fp32 compute gradient; the position
// embedding, norms and biases still fold. Without fusion every parameter folds, and the losses
// differ only by the fp32 roundings of the unfused gradients (bit-identical linear weight
// gradients on the CPU, fp32 vs fp64 sums of the embedding rows).
TEST(MixedPrecisionCpu, WordEmbeddingGradientIsFusedAndTracksTheUnfusedRun) {
  for (bool untied : {false, true}) {
    SCOPED_TRACE(untied ? "untied output layer" : "tied embedding");
    TrainConfig cfg = mixed_config();
    cfg.model.untie_embeddings_and_output_weights = untied;
    std::ostringstream log_fused, log_plain;
    Trainer fused(cfg, log_fused);
    cfg.gradient_accumulation_fusion = false;
    Trainer plain(cfg, log_plain);
    const model::ParameterRegistry& reg = fused.parameters();
    const model::Parameter& wte = reg.get("embedding.word_embeddings.weight");
    EXPECT_TRUE(wte.main_grad_fused);
    EXPECT_FALSE(wte.compute_grad.defined());
    EXPECT_FALSE(reg.get("embedding.position_embeddings.weight").main_grad_fused);
    EXPECT_EQ(reg.contains("output_layer.weight"), untied);
    if (untied) EXPECT_TRUE(reg.get("output_layer.weight").main_grad_fused);
    for (const model::Parameter& p : plain.parameters().parameters()) {
      EXPECT_FALSE(p.main_grad_fused) << p.spec.name;
      EXPECT_TRUE(p.compute_grad.defined()) << p.spec.name;
    }
    // The memory plan's compute gradients leave the word embedding (and the linear weights) out.
    EXPECT_LE(fused.memory_plan().compute_grads + static_cast<size_t>(wte.local_shape.numel()) * 4,
              plain.memory_plan().compute_grads);
    bool differs = false;
    for (int64_t i = 0; i < cfg.train_iters; ++i) {
      const IterationRecord a = plain.train_step();
      const IterationRecord b = fused.train_step();
      EXPECT_NEAR(b.loss, a.loss, 1e-6 * a.loss) << "iteration " << i + 1;
      EXPECT_NEAR(b.grad_norm, a.grad_norm, 1e-5 * a.grad_norm) << "iteration " << i + 1;
      differs |= b.grad_norm != a.grad_norm;
    }
    EXPECT_TRUE(differs);  // the two runs do round differently
  }
}

class MixedLayouts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { reference_ = new RunResult(single_rank(mixed_config())); }
  static void TearDownTestSuite() { delete reference_; }
  static const RunResult& reference() { return *reference_; }
  static RunResult* reference_;
};
RunResult* MixedLayouts::reference_ = nullptr;

TEST_F(MixedLayouts, EveryLayoutTrainsLikeOneRank) {
  std::vector<Layout> layouts;
  Layout l;
  l.dp = 2;
  l.distributed_optimizer = true;
  layouts.push_back(l);
  l.dp = 4;
  l.overlap_grad_reduce = l.overlap_param_gather = true;
  l.bucket_size = 300;
  layouts.push_back(l);
  l = Layout{};
  l.tp = 2, l.dp = 2, l.sequence_parallel = true, l.distributed_optimizer = true;
  layouts.push_back(l);
  l = Layout{};
  l.pp = 2, l.dp = 2, l.distributed_optimizer = true, l.overlap_grad_reduce = true;
  l.overlap_param_gather = true, l.layers_per_virtual_stage = 1;  // interleaved, 2 chunks
  layouts.push_back(l);
  for (const Layout& layout : layouts) {
    std::string log;
    // The plan and the optimizer agree: 1/DP of the fp64 master weights and of the moments.
    const RunResult got = run_layout(mixed_config(), layout, &log, [&](Trainer& t) {
      const size_t n = static_cast<size_t>(t.parameters().numel());
      EXPECT_EQ(t.memory_plan().master_params * static_cast<size_t>(layout.dp), n * 8);
      EXPECT_EQ(t.memory_plan().optimizer_state * static_cast<size_t>(layout.dp), 2 * n * 8);
      EXPECT_EQ(t.memory_plan().main_grads, n * 8);  // the main gradients stay whole
    });
    expect_same_training(got, reference(), layout.name());
    EXPECT_NE(log.find("> master weights (fp64) on this rank:"), std::string::npos) << log;
  }
}

TEST_F(MixedLayouts, ShardedMasterWeightsAreBitIdenticalToPlainAdamW) {
  Layout plain;
  plain.dp = 2;
  Layout sharded = plain;
  sharded.distributed_optimizer = true;
  const RunResult a = run_layout(mixed_unclipped(), plain);
  const RunResult b = run_layout(mixed_unclipped(), sharded);
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_EQ(a.losses[i], b.losses[i]) << "iteration " << i + 1;
    EXPECT_NEAR(a.grad_norms[i], b.grad_norms[i], 1e-12 * a.grad_norms[i]) << "iteration " << i + 1;
  }
  // The harness reads plain AdamW's fp64 master weights, but the sharded run's fp32 compute
  // weights (its master weights are sharded): the compute weights are the rounded masters.
  for (const auto& [name, values] : a.params) {
    std::vector<double> rounded;
    for (double v : values) rounded.push_back(static_cast<float>(v));
    EXPECT_EQ(b.params.at(name), rounded) << name;
  }
}

// Every tensor of the checkpoint at `iteration` in `dir`, read whole, by key.
std::map<std::string, std::vector<double>> checkpoint_tensors(const std::string& dir,
                                                              int64_t iteration) {
  ckpt::CheckpointReader reader(dir, iteration);
  DeviceContext ctx = DeviceContext::cpu();
  std::map<std::string, std::vector<double>> out;
  for (auto it = reader.metadata()["tensors"].begin(); it != reader.metadata()["tensors"].end();
       ++it) {
    const Shape shape = reader.global_shape(it.key());
    OwnedTensor t = OwnedTensor::empty(DType::kF64, shape);
    reader.read(ctx, {it.key(), shape, ckpt::ShardRegion::whole(shape), t.view(), true});
    out[it.key()] = testing::to_vector(t.view());
  }
  return out;
}

TEST_F(MixedLayouts, ShardedMasterCheckpointsSaveAndResume) {
  Layout plain;
  plain.dp = 2;
  Layout sharded = plain;
  sharded.distributed_optimizer = true;
  TempDir plain_dir, sharded_dir;
  auto saving = [](const std::string& dir) {
    TrainConfig c = mixed_unclipped();
    c.checkpoint.save = dir;
    c.checkpoint.exit_interval = 10;
    return c;
  };
  ASSERT_EQ(run_layout(saving(plain_dir.str()), plain).losses.size(), 10u);
  std::string log;
  ASSERT_EQ(run_layout(saving(sharded_dir.str()), sharded, &log).losses.size(), 10u);
  // The same checkpoint, whether the master weights and moments were sharded or not.
  const auto want = checkpoint_tensors(plain_dir.str(), 10);
  const auto got = checkpoint_tensors(sharded_dir.str(), 10);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [key, values] : want) {
    ASSERT_TRUE(got.count(key)) << key;
    EXPECT_EQ(got.at(key), values) << key;
  }
  EXPECT_TRUE(want.count("model/decoder.final_layernorm.weight"));
  // Bit-exact resume in the same layout; the other layouts within 1e-5 of one rank.
  const RunResult straight = run_layout(mixed_unclipped(), sharded);
  const RunResult one_rank = single_rank(mixed_unclipped());
  TrainConfig resume = mixed_unclipped();
  resume.checkpoint.load = sharded_dir.str();
  const RunResult rest = run_layout(resume, sharded);
  ASSERT_EQ(rest.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i)
    EXPECT_EQ(rest.losses[i], straight.losses[10 + i]) << "iteration " << 11 + i;
  for (const auto& [name, values] : straight.params) EXPECT_EQ(rest.params.at(name), values) << name;
  Layout tp2dp2 = sharded;
  tp2dp2.tp = 2;
  for (const Layout& other : {Layout{}, tp2dp2}) {
    const RunResult r = run_layout(resume, other);
    ASSERT_EQ(r.losses.size(), 10u) << other.name();
    for (size_t i = 0; i < 10; ++i)
      EXPECT_LT(std::abs(r.losses[i] - one_rank.losses[10 + i]), 1e-5 * one_rank.losses[10 + i])
          << other.name() << " iteration " << 11 + i;
  }
}

}  // namespace
}  // namespace shardlm::train
