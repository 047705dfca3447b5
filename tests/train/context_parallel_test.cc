// Context parallelism (--context-parallel-size) trains exactly like one rank: CPU, ranks as
// threads, fp32, dropout on (masks are keyed by global positions, so they do not depend on the
// split); 20 iterations give the single-rank losses within 1e-5 relative and the same final
// parameters within 1e-5. Alone and combined with TP + SP, DP with the distributed optimizer,
// PP, recomputation, and the Llama family (RoPE, grouped queries); --cp-comm-type all_gather
// (the default) and a2a (Ulysses).
#include <gtest/gtest.h>

#include <sstream>

#include "tests/ckpt/ckpt_test_util.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using namespace layout_harness;

Layout cp_layout(int cp, int tp = 1, int dp = 1, int pp = 1) {
  Layout l;
  l.cp = cp;
  l.tp = tp;
  l.dp = dp;
  l.pp = pp;
  return l;
}

TEST(ContextParallel, AloneMatchesOneRank) {
  const TrainConfig cfg = tiny_config();
  const RunResult reference = single_rank(cfg);
  // CP 4: chunks of 16 / 8 = 2 positions, rank r holds chunks r and 7 - r.
  for (int cp : {2, 4}) {
    const Layout l = cp_layout(cp);
    expect_same_training(run_layout(cfg, l), reference, l.name());
  }
}

TEST(ContextParallel, WithTensorSequenceAndDataParallel) {
  const TrainConfig cfg = tiny_config();
  const RunResult reference = single_rank(cfg);
  Layout tp_sp = cp_layout(2, 2);
  tp_sp.sequence_parallel = true;  // each rank's 8 positions split 4 + 4 over TP
  expect_same_training(run_layout(cfg, tp_sp), reference, tp_sp.name());
  // The gradients are reduced and the optimizer sharded over the data x context group (4).
  Layout dp = cp_layout(2, 1, 2);
  dp.distributed_optimizer = dp.overlap_grad_reduce = dp.overlap_param_gather = true;
  dp.bucket_size = 3000;
  expect_same_training(run_layout(cfg, dp), reference, dp.name());
  Layout all = cp_layout(2, 2, 2);
  all.sequence_parallel = all.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, all), reference, all.name());
}

TEST(ContextParallel, WithPipelineAndRecompute) {
  TrainConfig cfg = tiny_config(4);
  const RunResult reference = single_rank(cfg);
  expect_same_training(run_layout(cfg, cp_layout(2, 1, 1, 2)), reference, "CP2 PP2");
  // 8 ranks: CP2 x TP2 (SP) x PP2 with the distributed optimizer (grad norm summed over the
  // world), and CP2 x PP2 interleaved (two virtual stages per rank).
  Layout all = cp_layout(2, 2, 1, 2);
  all.sequence_parallel = all.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, all), reference, all.name());
  Layout interleaved = cp_layout(2, 1, 1, 2);
  interleaved.layers_per_virtual_stage = 1;
  expect_same_training(run_layout(cfg, interleaved), reference, interleaved.name());
  cfg.recompute.granularity = "selective";
  expect_same_training(run_layout(cfg, cp_layout(2, 2)), reference, "CP2 TP2 selective");
  cfg.recompute.granularity = "full";
  cfg.recompute.method = "uniform";
  cfg.recompute.num_layers = 2;
  expect_same_training(run_layout(cfg, cp_layout(2)), reference, "CP2 full recompute");
}

TEST(ContextParallel, LlamaWithRopeAndGroupedQueries) {
  // RoPE takes the rank's rows of the table; GQA-2 at TP 2 and MQA (a replicated k/v group).
  for (int64_t groups : {2, 1}) {
    const TrainConfig cfg = with_query_groups(tiny_config(), groups, /*llama=*/true);
    const RunResult reference = single_rank(cfg);
    Layout l = cp_layout(2, 2);
    l.sequence_parallel = true;
    expect_same_training(run_layout(cfg, l), reference,
                         "llama groups " + std::to_string(groups) + " " + l.name());
    expect_same_training(run_layout(cfg, cp_layout(4)), reference,
                         "llama groups " + std::to_string(groups) + " CP4");
  }
}

TEST(ContextParallel, LogsTheLayoutAndShardsOverDataTimesContext) {
  TrainConfig cfg = tiny_config();
  cfg.train_iters = 1;
  cfg.optimizer.lr_warmup_iters = 0;
  Layout l = cp_layout(2, 1, 2);
  l.distributed_optimizer = true;
  std::string log;
  run_layout(cfg, l, &log);
  EXPECT_NE(log.find("CP 2"), std::string::npos) << log;
  EXPECT_NE(log.find("distributed optimizer: 1/4"), std::string::npos) << log;
}

TEST(ContextParallel, CheckpointSavedAtCp2ResumesWithoutCpAndAtCp4) {
  // Parameters are replicated over CP and the moments sharded over data x context ranks: a
  // checkpoint saved at CP 2 x DP 2 (distributed optimizer) resumes in other layouts.
  TrainConfig cfg = tiny_config();
  cfg.train_iters = 12;
  cfg.logging.eval_iters = 0;
  const RunResult reference = single_rank(cfg);
  ckpt::testing::TempDir dir;
  TrainConfig save = cfg;
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 6;
  Layout saved = cp_layout(2, 1, 2);
  saved.distributed_optimizer = true;
  ASSERT_EQ(run_layout(save, saved).losses.size(), 6u);
  TrainConfig resume = cfg;
  resume.checkpoint.load = dir.str();
  Layout cp4 = cp_layout(4);
  cp4.distributed_optimizer = true;
  for (const Layout& l : {cp_layout(1), cp4}) {
    const RunResult rest = run_layout(resume, l);
    ASSERT_EQ(rest.losses.size(), 6u) << l.name();
    for (size_t i = 0; i < 6; ++i)
      EXPECT_LT(std::abs(rest.losses[i] - reference.losses[6 + i]), 1e-5 * reference.losses[6 + i])
          << l.name() << " iteration " << 7 + i;
  }
}

TEST(ContextParallel, BadLayoutsAreRejectedWithAFix) {
  TrainConfig c = tiny_config();
  c.parallel.context_parallel_size = 2;
  c.parallel.tensor_model_parallel_size = 4;
  c.parallel.sequence_parallel = true;
  c.model.seq_length = 12;  // 6 positions per CP rank do not split over 4 TP ranks
  const std::string msg = config_error(validation(c, 8));
  EXPECT_NE(msg.find("--seq-length / --context-parallel-size = 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiple of 8"), std::string::npos) << msg;
}

// --cp-comm-type a2a (DeepSpeed-Ulysses): all-to-alls give each CP rank the whole sequence for
// 1/CP of its query groups; the same training as one rank (and as all_gather), dropout on.
TrainConfig ulysses(TrainConfig c) {
  c.parallel.cp_comm_type = "a2a";
  return c;
}

TEST(ContextParallelAllToAll, AloneMatchesOneRank) {
  const TrainConfig cfg = tiny_config();  // 4 heads, 4 groups: CP 4 gives each rank one
  const RunResult reference = single_rank(cfg);
  for (int cp : {2, 4}) {
    const Layout l = cp_layout(cp);
    expect_same_training(run_layout(ulysses(cfg), l), reference, "a2a " + l.name());
  }
}

TEST(ContextParallelAllToAll, WithTensorSequenceAndDataParallel) {
  // 8 ranks: each TP rank's 2 groups split over CP 2 (global heads 0 | 1 | 2 | 3).
  const TrainConfig cfg = tiny_config();
  Layout all = cp_layout(2, 2, 2);
  all.sequence_parallel = all.distributed_optimizer = true;
  expect_same_training(run_layout(ulysses(cfg), all), single_rank(cfg), "a2a " + all.name());
}

TEST(ContextParallelAllToAll, LlamaWithGroupedQueries) {
  // GQA: 2 groups of 2 heads, one group per CP rank; RoPE applied before the exchange.
  const TrainConfig cfg = with_query_groups(tiny_config(), 2, /*llama=*/true);
  expect_same_training(run_layout(ulysses(cfg), cp_layout(2)), single_rank(cfg),
                       "a2a llama groups 2 CP2");
}

TEST(ContextParallelAllToAll, WithPipelineAndRecompute) {
  TrainConfig cfg = tiny_config(4);
  const RunResult reference = single_rank(cfg);
  expect_same_training(run_layout(ulysses(cfg), cp_layout(2, 1, 1, 2)), reference, "a2a CP2 PP2");
  // Selective recompute: backward uses the rows the recompute left exchanged in scratch.
  cfg.recompute.granularity = "selective";
  expect_same_training(run_layout(ulysses(cfg), cp_layout(2)), reference, "a2a CP2 selective");
  cfg.recompute.granularity = "full";
  cfg.recompute.method = "uniform";
  cfg.recompute.num_layers = 2;
  expect_same_training(run_layout(ulysses(cfg), cp_layout(2)), reference, "a2a CP2 full recompute");
}

TEST(ContextParallelAllToAll, MatchesAllGather) {
  const TrainConfig cfg = with_query_groups(tiny_config(), 2, /*llama=*/true);
  expect_same_training(run_layout(ulysses(cfg), cp_layout(2)), run_layout(cfg, cp_layout(2)),
                       "a2a vs all_gather CP2");
}

TEST(ContextParallelAllToAll, BadLayoutsAreRejectedWithTheNumbers) {
  // 2 groups on TP 2: one group per TP rank, which CP 2 cannot split.
  TrainConfig c = ulysses(with_query_groups(tiny_config(), 2, /*llama=*/false));
  c.parallel.context_parallel_size = 2;
  c.parallel.tensor_model_parallel_size = 2;
  std::string msg = config_error(validation(c, 4));
  EXPECT_NE(msg.find("--num-query-groups 2 (--num-attention-heads 4) with "
                     "--tensor-model-parallel-size 2 and --context-parallel-size 2"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("gives each tensor-parallel rank 1 query groups, not divisible by 2"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("use --cp-comm-type all_gather"), std::string::npos) << msg;
  // One group replicated on both TP ranks.
  c.model.num_query_groups = 1;
  msg = config_error(validation(c, 4));
  EXPECT_NE(msg.find("replicates each query group on 2 tensor-parallel ranks"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("use --cp-comm-type all_gather"), std::string::npos) << msg;
  // The same layouts train with all_gather; p2p stays unavailable, naming both that work.
  c.parallel.cp_comm_type = "all_gather";
  EXPECT_NO_THROW(validation(c, 4)());
  c.parallel.cp_comm_type = "p2p";
  msg = config_error(validation(c, 4));
  EXPECT_NE(msg.find("--cp-comm-type p2p is not implemented"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Use --cp-comm-type all_gather or a2a"), std::string::npos) << msg;
}

}  // namespace
}  // namespace shardlm::train
