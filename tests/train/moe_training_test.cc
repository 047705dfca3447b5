// Mixture-of-experts training (--num-experts, layers/moe_mlp.h) through the Trainer: CPU, ranks
// as threads, fp32, dropout on. Data parallelism (with the distributed optimizer and overlapped
// reduction), tensor parallelism with and without SP (expert tensor parallelism), context
// parallelism, pipeline parallelism and full recomputation give the single rank's 20 losses
// within 1e-5 relative and the same final parameters; the load-balancing loss is logged; a
// checkpoint saved in parallel resumes on one rank within 1e-5. Expert parallelism (alone and
// with DP, the distributed optimizer, TP + SP, CP and PP) gives the single rank's training too,
// and its checkpoints reshard to one rank and to another EP size.
#include <gtest/gtest.h>

#include <functional>
#include <sstream>

#include "tests/ckpt/ckpt_test_util.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using namespace layout_harness;

TrainConfig moe_config(int64_t num_layers = 2) {
  TrainConfig c = tiny_config(num_layers);
  c.model.num_experts = 4;
  c.model.moe_router_topk = 2;
  c.model.moe_ffn_hidden_size = 48;
  c.model.moe_aux_loss_coeff = 0.01;
  return c;
}

Layout layout(int dp, int pp = 1) {
  Layout l;
  l.dp = dp;
  l.pp = pp;
  return l;
}

TEST(MoeTraining, DataParallelMatchesOneRank) {
  const TrainConfig cfg = moe_config();
  const RunResult reference = single_rank(cfg);
  expect_same_training(run_layout(cfg, layout(2)), reference, "DP2");
  Layout dp4 = layout(4);
  dp4.distributed_optimizer = dp4.overlap_grad_reduce = dp4.overlap_param_gather = true;
  dp4.bucket_size = 4000;
  expect_same_training(run_layout(cfg, dp4), reference, dp4.name());
}

TEST(MoeTraining, PipelineAndRecomputeMatchOneRank) {
  TrainConfig cfg = moe_config(4);
  cfg.model.moe_layer_freq = 2;  // layers 0 and 2 MoE, 1 and 3 dense
  cfg.model.swiglu = true;
  cfg.model.moe_router_pre_softmax = true;
  const RunResult reference = single_rank(cfg);
  Layout pp = layout(2, 2);
  pp.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, pp), reference, pp.name());
  Layout interleaved = layout(1, 2);
  interleaved.layers_per_virtual_stage = 1;
  expect_same_training(run_layout(cfg, interleaved), reference, interleaved.name());
  cfg.recompute.granularity = "full";
  cfg.recompute.method = "uniform";
  cfg.recompute.num_layers = 2;
  expect_same_training(run_layout(cfg, layout(1)), reference, "full recompute");
  // --no-recompute-norm-activation: the MoE backward reads the saved norm output.
  cfg.recompute = {};
  cfg.recompute.norm_activation = false;
  Layout tp = layout(1);
  tp.tp = 2;
  tp.sequence_parallel = true;
  expect_same_training(run_layout(cfg, tp), reference, "norm/activation saved, TP2 SP");
}

TEST(MoeTraining, LogsTheLoadBalancingLoss) {
  TrainConfig cfg = moe_config();
  cfg.train_iters = 2;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.logging.log_interval = 1;
  std::ostringstream log;
  Trainer t(cfg, log);
  t.train();
  const std::string text = log.str();
  const size_t at = text.rfind("load_balancing_loss: ");  // the last iteration's line
  ASSERT_NE(at, std::string::npos) << text;
  // The switch loss over its coefficient is E · Σ_e f_e · P_e >= 1 (1 when perfectly balanced).
  const double value = std::stod(text.substr(at + 21));
  EXPECT_GE(value, 1.0 - 1e-6);
  EXPECT_LT(value, 4.0);
  EXPECT_NEAR(t.history().back().moe_aux_loss, value, 1e-5 * value);  // printed with 7 digits
}

// Trains cfg (8 iterations) for 4 at `saved` and saves into dir, resumes at `resumed` (one rank
// by default): the last 4 losses follow the straight single-rank run within 1e-5.
void expect_resumes_on_one_rank(TrainConfig cfg, const Layout& saved,
                                const ckpt::testing::TempDir& dir,
                                const Layout& resumed = layout(1)) {
  cfg.train_iters = 8;
  cfg.logging.eval_iters = 0;
  const RunResult reference = single_rank(cfg);
  TrainConfig save = cfg;
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 4;
  ASSERT_EQ(run_layout(save, saved).losses.size(), 4u) << saved.name();
  TrainConfig resume = cfg;
  resume.checkpoint.load = dir.str();
  const RunResult rest = run_layout(resume, resumed);
  ASSERT_EQ(rest.losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_LT(std::abs(rest.losses[i] - reference.losses[4 + i]), 1e-5 * reference.losses[4 + i])
        << saved.name() << " -> " << resumed.name() << ", iteration " << 5 + i;
}

TEST(MoeTraining, CheckpointSavedAtDataParallelResumesOnOneRank) {
  ckpt::testing::TempDir dir;
  Layout saved = layout(2);
  saved.distributed_optimizer = true;
  expect_resumes_on_one_rank(moe_config(), saved, dir);
  // A dense model cannot load it: the error names the MoE flags to pass.
  TrainConfig dense = moe_config();
  dense.model.num_experts = 0;
  dense.checkpoint.load = dir.str();
  const std::string err = config_error([&] { run_layout(dense, layout(1)); });
  EXPECT_NE(err.find("--num-experts 4 --moe-router-topk 2 --moe-ffn-hidden-size 48"),
            std::string::npos)
      << err;
}

// Expert weights split over TP (SwiGLU's fc1 in [gate_r ; up_r] chunks) reshard on load: saved at
// TP2 x DP2 with the distributed optimizer, resumed on one rank.
TEST(MoeTraining, CheckpointSavedWithTensorParallelExpertsResumesOnOneRank) {
  TrainConfig cfg = moe_config();
  cfg.model.swiglu = true;
  ckpt::testing::TempDir dir;
  Layout saved = layout(2);
  saved.tp = 2;
  saved.distributed_optimizer = true;
  expect_resumes_on_one_rank(cfg, saved, dir);
}

// Mixed precision (fp32 compute, fp64 master weights: --bf16's code paths on the CPU) with 16
// experts and top-1 routing over 32-token micro-batches, so some experts get no token in some
// micro-batches: their fused weight gradients must start at the first micro-batch that reaches
// them and be zero when none does. Fused and unfused (folded compute gradients) runs agree, and
// both follow the fp32 run.
TEST(MoeTraining, MixedPrecisionWithIdleExpertsTracksTheUnfusedAndFp32Runs) {
  TrainConfig cfg = moe_config();
  cfg.model.num_experts = 16;
  cfg.model.moe_router_topk = 1;
  cfg.train_iters = 8;
  cfg.logging.eval_iters = 0;
  std::ostringstream log_fp32, log_fused, log_plain;
  Trainer fp32(cfg, log_fp32);
  cfg.main_params_dtype = "fp64";
  Trainer fused(cfg, log_fused);
  cfg.gradient_accumulation_fusion = false;
  Trainer plain(cfg, log_plain);
  EXPECT_TRUE(fused.parameters()
                  .get("decoder.layers.0.mlp.experts.local_experts.15.linear_fc1.weight")
                  .main_grad_fused);
  for (int64_t i = 0; i < cfg.train_iters; ++i) {
    const IterationRecord a = plain.train_step();
    const IterationRecord b = fused.train_step();
    const IterationRecord c = fp32.train_step();
    EXPECT_NEAR(b.loss, a.loss, 1e-6 * a.loss) << "iteration " << i + 1;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 1e-5 * a.grad_norm) << "iteration " << i + 1;
    EXPECT_NEAR(c.loss, a.loss, 1e-5 * a.loss) << "iteration " << i + 1;
  }
}

// Expert tensor parallelism (= TP): every rank runs its slice of every expert on all tokens.
TEST(MoeTraining, TensorAndSequenceParallelMatchOneRank) {
  for (bool swiglu : {false, true}) {
    TrainConfig cfg = moe_config();
    cfg.model.swiglu = swiglu;  // fc1 split as [gate_r ; up_r]
    const RunResult reference = single_rank(cfg);
    Layout tp = layout(1);
    tp.tp = 2;
    expect_same_training(run_layout(cfg, tp), reference, tp.name());
    Layout sp = layout(2);
    sp.tp = 2;
    sp.sequence_parallel = sp.distributed_optimizer = true;
    expect_same_training(run_layout(cfg, sp), reference, sp.name());
  }
}

// Context parallelism: each rank routes its own tokens; the load-balancing counts and token
// total are the whole micro-batch's, so the CP ranks' losses add up to the single rank's.
TEST(MoeTraining, ContextParallelMatchesOneRank) {
  TrainConfig cfg = moe_config();
  cfg.model.moe_aux_loss_coeff = 0.1;  // a load-balancing gradient that matters
  const RunResult reference = single_rank(cfg);
  Layout cp = layout(1);
  cp.cp = 2;
  expect_same_training(run_layout(cfg, cp), reference, cp.name());
  Layout all = layout(2);
  all.cp = 2;
  all.tp = 2;
  all.sequence_parallel = all.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, all), reference, all.name());
}

Layout expert_parallel(int ep, int dp) {
  Layout l = layout(dp);
  l.ep = ep;
  return l;
}

// Expert parallelism: each EP rank holds E/EP experts and trains on its own micro-batches; the
// tokens reach their experts by all-to-all. The experts' gradients are reduced over the
// expert-data-parallel ranks (EP2 x DP4: pairs; EP = DP: none), the distributed optimizer shards
// them there, and the gradient norm counts every expert once.
TEST(MoeTraining, ExpertParallelMatchesOneRank) {
  const TrainConfig cfg = moe_config();
  const RunResult reference = single_rank(cfg);
  expect_same_training(run_layout(cfg, expert_parallel(2, 2)), reference, "EP2 DP2");
  Layout dp4 = expert_parallel(2, 4);
  dp4.distributed_optimizer = dp4.overlap_grad_reduce = dp4.overlap_param_gather = true;
  dp4.bucket_size = 4000;
  std::string log;
  expect_same_training(run_layout(cfg, dp4, &log), reference, dp4.name());
  // The experts' state is sharded over the 2 ranks holding the same experts, the rest over 4.
  EXPECT_NE(log.find("(distributed optimizer: 1/4, experts 1/2 of"), std::string::npos) << log;
  // One expert per rank, gradients all-reduced (no distributed optimizer).
  Layout ep4 = expert_parallel(4, 4);
  ep4.overlap_grad_reduce = true;
  expect_same_training(run_layout(cfg, ep4), reference, ep4.name());
}

TEST(MoeTraining, ExpertParallelWithTensorContextAndPipelineParallelMatchesOneRank) {
  TrainConfig cfg = moe_config(4);
  cfg.model.moe_layer_freq = 2;  // layers 0 and 2 MoE
  cfg.model.swiglu = true;
  cfg.model.moe_aux_loss_coeff = 0.1;
  const RunResult reference = single_rank(cfg);
  Layout tp = expert_parallel(2, 2);
  tp.tp = 2;  // expert TP: the exchange runs between ranks of equal TP rank
  tp.sequence_parallel = tp.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, tp), reference, tp.name());
  Layout cp = expert_parallel(2, 1);
  cp.cp = 2;  // the EP group is the CP pair: different tokens of the same sequences
  expect_same_training(run_layout(cfg, cp), reference, cp.name());
  Layout pp = expert_parallel(2, 2);
  pp.pp = 2;
  pp.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, pp), reference, pp.name());
  // Full recomputation re-runs the routing and both exchanges inside backward, on every EP rank
  // at the same point.
  cfg.recompute.granularity = "full";
  cfg.recompute.method = "uniform";
  cfg.recompute.num_layers = 2;
  expect_same_training(run_layout(cfg, expert_parallel(2, 2)), reference, "EP2 DP2 full recompute");
}

// Top-1 of 16 experts, four per rank: experts (and in some micro-batches whole ranks' shares)
// get no rows, so zero-row blocks are exchanged and skipped.
TEST(MoeTraining, ExpertParallelWithIdleExpertsMatchesOneRank) {
  TrainConfig cfg = moe_config();
  cfg.model.num_experts = 16;
  cfg.model.moe_router_topk = 1;
  cfg.train_iters = 8;
  const RunResult reference = single_rank(cfg);
  Layout ep4 = expert_parallel(4, 4);
  ep4.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, ep4), reference, ep4.name());
}

// Token dropping (--moe-expert-capacity-factor): each rank drops within its own micro-batches,
// which DP, EP (capacity per source rank and expert) and TP + SP (every TP rank routes the same
// gathered tokens) leave unchanged, so they follow the single rank; CP would not (each CP rank
// holds half the tokens, so its capacities and drops are its half's, as in Megatron).
TEST(MoeTraining, TokenDroppingLayoutsMatchOneRank) {
  for (bool by_position : {false, true}) {
    TrainConfig cfg = moe_config();
    cfg.model.moe_expert_capacity_factor = 0.5;
    cfg.model.moe_token_drop_by_position = by_position;
    cfg.train_iters = 10;
    const RunResult reference = single_rank(cfg);
    Layout ep = expert_parallel(2, 4);
    ep.distributed_optimizer = true;
    expect_same_training(run_layout(cfg, ep), reference, ep.name());
    Layout tp = expert_parallel(1, 2);
    tp.tp = 2;
    tp.sequence_parallel = true;
    expect_same_training(run_layout(cfg, tp), reference, tp.name());
    // Dropping changes training: the dropless run is another one.
    cfg.model.moe_expert_capacity_factor = 0;
    EXPECT_GT(std::abs(single_rank(cfg).losses.back() - reference.losses.back()),
              1e-4 * reference.losses.back());
  }
}

// cfg (an MoE loss switched on by `on`, off by `off`) trains at CP2 and at EP2 x TP2 SP distopt
// as on one rank, logs `logged` at CP2, and differs from the run without that loss.
void expect_moe_loss_layouts_match_one_rank(TrainConfig cfg,
                                            const std::function<void(TrainConfig&)>& off,
                                            const std::string& logged, double differs_by) {
  cfg.train_iters = 10;
  cfg.logging.log_interval = 1;
  const RunResult reference = single_rank(cfg);
  Layout cp = layout(1);
  cp.cp = 2;
  std::string log;
  expect_same_training(run_layout(cfg, cp, &log), reference, cp.name());
  EXPECT_NE(log.find(logged), std::string::npos) << log;
  Layout tp = expert_parallel(2, 2);
  tp.tp = 2;
  tp.sequence_parallel = tp.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, tp), reference, tp.name());
  off(cfg);
  EXPECT_GT(std::abs(single_rank(cfg).losses.back() - reference.losses.back()),
            differs_by * reference.losses.back());
}

// The router z-loss (--moe-z-loss-coeff): a mean over the micro-batch's tokens, so CP ranks add
// their parts and TP ranks (same tokens) do not; logged as z_loss, like Megatron.
TEST(MoeTraining, RouterZLossLayoutsMatchOneRank) {
  TrainConfig cfg = moe_config();
  cfg.model.moe_z_loss_coeff = 0.05;
  expect_moe_loss_layouts_match_one_rank(
      cfg, [](TrainConfig& c) { c.model.moe_z_loss_coeff = 0; }, " z_loss: ", 1e-5);
}

// The sequence-level load-balancing loss: per-sequence counts summed over the CP ranks holding
// each sequence's halves, the same sequences on every TP rank; the switch loss over the whole
// micro-batch is another run.
TEST(MoeTraining, SequenceAuxLossLayoutsMatchOneRank) {
  TrainConfig cfg = moe_config();
  cfg.model.moe_seq_aux_loss = true;
  cfg.model.moe_aux_loss_coeff = 0.1;
  expect_moe_loss_layouts_match_one_rank(
      cfg, [](TrainConfig& c) { c.model.moe_seq_aux_loss = false; }, "load_balancing_loss: ",
      1e-6);
}

// Checkpoints name experts globally, so they reshard across EP sizes: saved at EP2 x DP2
// (without the distributed optimizer: expert-data-parallel rank 0 writes each expert) resumes on
// one rank; saved at EP2 x DP4 with the distributed optimizer resumes at EP4 x DP4.
TEST(MoeTraining, ExpertParallelCheckpointsReshard) {
  {
    ckpt::testing::TempDir dir;
    expect_resumes_on_one_rank(moe_config(), expert_parallel(2, 2), dir);
  }
  ckpt::testing::TempDir dir;
  Layout saved = expert_parallel(2, 4);
  saved.distributed_optimizer = true;
  Layout resumed = expert_parallel(4, 4);
  resumed.distributed_optimizer = true;
  expect_resumes_on_one_rank(moe_config(), saved, dir, resumed);
}

TEST(MoeTraining, ExpertParallelLayoutsThatCannotSplitAreRejectedWithAFix) {
  TrainConfig dense = tiny_config();
  dense.parallel.expert_model_parallel_size = 2;
  EXPECT_NE(config_error(validation(dense, 2)).find("needs a mixture-of-experts model"),
            std::string::npos);
  TrainConfig cfg = moe_config();
  cfg.parallel.expert_model_parallel_size = 8;  // 4 experts over 8 ranks
  EXPECT_NE(config_error(validation(cfg, 8)).find("--num-experts 4 is not divisible by "
                                                  "--expert-model-parallel-size 8"),
            std::string::npos);
}

}  // namespace
}  // namespace shardlm::train
