// Checkpoints across pipeline layouts (issue 6; N ranks as threads, CPU fp32, dropout on):
// parameters are saved under their global names from whichever stage holds them (the last
// stage's copy of the tied embedding is not written), so a TP=2 x PP=2 checkpoint resumes as
// TP=1 x PP=1 and TP=4 x PP=1 with the single-rank loss sequence, and 10 + save + 10 iterations
// at PP=2 are bit-identical to 20 straight ones.
#include <gtest/gtest.h>

#include <cmath>

#include "ckpt_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using ckpt::testing::TempDir;
using namespace layout_harness;

// The layout tests' model with 4 layers, without evaluation.
TrainConfig config() {
  TrainConfig c = tiny_config(4);
  c.logging.eval_iters = 0;
  return c;
}

Layout layout(int tp, int pp, int dp = 1, bool distopt = false) {
  Layout l;
  l.tp = tp;
  l.pp = pp;
  l.dp = dp;
  l.distributed_optimizer = distopt;
  return l;
}

TEST(PipelineReshard, SaveTp2Pp2ResumeWithoutPipeline) {
  const RunResult ref = single_rank(config());
  TempDir dir;
  TrainConfig save = config();
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 10;
  const RunResult first = run_layout(save, layout(2, 2));
  ASSERT_EQ(first.losses.size(), 10u);
  {  // 4 ranks wrote; the tied embedding once (by the first stage)
    ckpt::CheckpointReader reader(dir.str(), 10);
    reader.verify_files();
    EXPECT_EQ(reader.metadata()["world_size"], 4);
    EXPECT_EQ(reader.global_shape("model/embedding.word_embeddings.weight"), (Shape{64, 32}));
    // Two vocabulary shards from the first stage's TP ranks, none from the last stage's copy.
    for (const char* key : {"model/embedding.word_embeddings.weight",
                            "optim/exp_avg/embedding.word_embeddings.weight"})
      EXPECT_EQ(reader.metadata()["tensors"][key]["shards"].size(), 2u) << key;
    EXPECT_EQ(reader.global_shape("model/decoder.layers.3.mlp.linear_fc2.weight"),
              (Shape{32, 128}));
  }
  double worst = 0;
  for (int i = 0; i < 10; ++i)
    worst = std::max(worst, std::abs(first.losses[i] - ref.losses[i]) / ref.losses[i]);
  for (const Layout& target : {layout(1, 1), layout(4, 1)}) {
    TrainConfig resume = config();
    resume.checkpoint.load = dir.str();
    const RunResult rest = run_layout(resume, target);
    ASSERT_EQ(rest.losses.size(), 10u) << target.name();
    for (int i = 0; i < 10; ++i) {
      const double rel = std::abs(rest.losses[i] - ref.losses[10 + i]) / ref.losses[10 + i];
      worst = std::max(worst, rel);
      EXPECT_LT(rel, 1e-6) << target.name() << " iteration " << 11 + i << ": "
                           << rest.losses[i] << " vs " << ref.losses[10 + i];
    }
  }
  std::cout << "TP2 x PP2 -> TP1 / TP4: max loss rel diff " << worst << "\n";
}

TEST(PipelineReshard, ResumeAtPp2IsBitIdentical) {
  // PP 2 x DP 2 with the distributed optimizer: the flat moment shards of both stages,
  // including the tied embedding's own bucket, round-trip exactly.
  const Layout l = layout(1, 2, 2, /*distopt=*/true);
  const RunResult straight = run_layout(config(), l);
  TempDir dir;
  TrainConfig save = config();
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 10;
  ASSERT_EQ(run_layout(save, l).losses.size(), 10u);
  TrainConfig resume = config();
  resume.checkpoint.load = dir.str();
  const RunResult rest = run_layout(resume, l);
  ASSERT_EQ(rest.losses.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(rest.losses[i], straight.losses[10 + i]) << 11 + i;
  for (const auto& [name, values] : straight.params)
    EXPECT_EQ(rest.params.at(name), values) << name;
}

}  // namespace
}  // namespace shardlm::train
