// T5 (--model-type t5, Megatron's pretrain_t5) through the Trainer on the CPU, ranks as threads:
// it learns the mock span-corruption task, tensor (with and without SP) and data parallelism
// (distributed optimizer) and recomputation give the one-rank run, a checkpoint saved at TP2
// resumes on one rank, and what T5 does not support is refused with the reason.
#include <gtest/gtest.h>

#include <sstream>

#include "shardlm/train/metrics.h"
#include "tests/ckpt/ckpt_test_util.h"
#include "tests/train/layout_harness.h"

namespace shardlm::train {
namespace {

using namespace layout_harness;

// Encoder 16 tokens (3 layers), decoder 8 tokens (2 layers).
TrainConfig t5_config() {
  TrainConfig c = tiny_config(2);
  c.model.family = model::ModelFamily::kT5;
  c.model.seq_length = 16;
  c.model.decoder_seq_length = 8;
  c.model.encoder_num_layers = 3;
  return c;
}

TEST(T5Training, LearnsTheMaskedSpans) {
  TrainConfig c = t5_config();
  c.model.hidden_size = 64;
  c.model.vocab_size = 128;
  c.model.hidden_dropout = c.model.attention_dropout = 0.0;
  c.model.seq_length = 32;
  c.model.decoder_seq_length = 16;
  c.train_iters = 120;
  c.optimizer.lr = 2e-3;
  c.optimizer.min_lr = 2e-4;
  c.micro_batch_size = 8;
  c.global_batch_size = 16;
  c.logging.eval_interval = 120;
  c.logging.eval_iters = 2;
  std::ostringstream log;
  Trainer trainer(c, log);
  trainer.train();
  const auto& h = trainer.history();
  auto mean = [&](size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += h[i].loss;
    return s / static_cast<double>(to - from);
  };
  const double start = mean(0, 10), end = mean(h.size() - 10, h.size());
  std::cout << "T5 mock: loss " << start << " -> " << end << "\n";
  EXPECT_NEAR(start, std::log(128.0), 0.5);  // a fresh model guesses over the vocabulary
  EXPECT_LT(end, start - 1.5);
  EXPECT_NE(log.str().find("validation loss"), std::string::npos) << log.str();
}

TEST(T5Training, ParallelLayoutsMatchOneRank) {
  TrainConfig cfg = t5_config();
  cfg.train_iters = 4;
  cfg.optimizer.lr_warmup_iters = 1;
  const RunResult reference = single_rank(cfg);
  Layout tp_sp;
  tp_sp.tp = 2;
  tp_sp.dp = 2;
  tp_sp.sequence_parallel = tp_sp.distributed_optimizer = true;
  expect_same_training(run_layout(cfg, tp_sp), reference, "T5 " + tp_sp.name(), 1e-6, 1e-5);
  Layout tp;
  tp.tp = 2;
  expect_same_training(run_layout(cfg, tp), reference, "T5 " + tp.name(), 1e-6, 1e-5);
  Layout tp4;
  tp4.tp = 4;
  tp4.sequence_parallel = true;
  expect_same_training(run_layout(cfg, tp4), reference, "T5 " + tp4.name(), 1e-6, 1e-5);
  Layout dp;
  dp.dp = 2;
  expect_same_training(run_layout(cfg, dp), reference, "T5 " + dp.name(), 1e-6, 1e-5);
}

// Recomputation re-runs the same forward (same dropout masks) in both stacks: full (uniform and
// block) and selective give the run without recomputation, also under TP + SP.
TEST(T5Training, RecomputationMatchesTheRunWithout) {
  TrainConfig cfg = t5_config();
  cfg.train_iters = 3;
  cfg.optimizer.lr_warmup_iters = 1;
  const RunResult reference = single_rank(cfg);
  for (const auto& [granularity, method] :
       {std::pair<std::string, std::string>{"full", "uniform"}, {"full", "block"},
        {"selective", ""}}) {
    TrainConfig r = cfg;
    r.recompute.granularity = granularity;
    r.recompute.method = method;
    r.recompute.num_layers = method.empty() ? 0 : 1;
    r.recompute.norm_activation = method != "block";  // also the saved-outputs path
    expect_same_training(single_rank(r), reference, "T5 recompute " + granularity + " " + method,
                         1e-9, 1e-9);
    Layout l;
    l.tp = 2;
    l.sequence_parallel = true;
    expect_same_training(run_layout(r, l), reference,
                         "T5 recompute " + granularity + " " + method + " " + l.name(), 1e-6,
                         1e-5);
  }
}

// A checkpoint saved at TP2 with SP (the cross-attention's linear_q / linear_kv split by heads,
// the output bias with the vocabulary) resumes on one rank; GPT flags cannot load it.
TEST(T5Training, CheckpointSavedAtTp2ResumesOnOneRank) {
  TrainConfig cfg = t5_config();
  cfg.train_iters = 6;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.logging.eval_iters = 0;
  const RunResult reference = single_rank(cfg);
  ckpt::testing::TempDir dir;
  TrainConfig save = cfg;
  save.checkpoint.save = dir.str();
  save.checkpoint.exit_interval = 3;
  Layout saved;
  saved.tp = 2;
  saved.sequence_parallel = true;
  ASSERT_EQ(run_layout(save, saved).losses.size(), 3u);
  TrainConfig resume = cfg;
  resume.checkpoint.load = dir.str();
  const RunResult rest = single_rank(resume);
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_LT(std::abs(rest.losses[i] - reference.losses[3 + i]), 1e-5 * reference.losses[3 + i])
        << "iteration " << 4 + i;
  TrainConfig gpt = resume;
  gpt.model.family = model::ModelFamily::kGPT;
  const std::string err = config_error([&] { single_rank(gpt); });
  EXPECT_NE(err.find("--model-type t5"), std::string::npos) << err;
}

TEST(T5Training, PipelineAndContextParallelismAreRefusedWithTheReason) {
  TrainConfig cfg = t5_config();
  cfg.train_iters = 2;
  cfg.optimizer.lr_warmup_iters = 1;
  Layout cp;
  cp.cp = 2;
  std::string err = config_error([&] { run_layout(cfg, cp); });
  EXPECT_NE(err.find("--context-parallel-size 2 is not supported for --model-type t5"),
            std::string::npos)
      << err;
  Layout pp;
  pp.pp = 2;
  err = config_error([&] { run_layout(cfg, pp); });
  EXPECT_NE(err.find("--pipeline-model-parallel-size 2"), std::string::npos) << err;
  TrainConfig bad = cfg;
  bad.model.decoder_seq_length = 0;
  err = config_error([&] { single_rank(bad); });
  EXPECT_NE(err.find("--decoder-seq-length"), std::string::npos) << err;
}

// MFU's FLOPs for T5, counted by hand for a tiny model (hidden 8, 2 heads, ffn 12, biases,
// LayerNorm, padded vocab 12, T_e 7, T_d 5, 3 encoder and 2 decoder layers):
//   encoder layer 532 parameters (norms 2x16, QKV 216, proj 72, fc1 108, fc2 104), final norm 16;
//   decoder layer 532 + cross-attention 304 (norm 16, q 72, kv 144, proj 72), final norm 16,
//   output bias 12. On T_e rows: 3·532 + 16 + 2·144 = 1900; on T_d rows: 2·(532 + 160) + 28 = 1412.
//   sample = 6·(1900·7 + (1412 + 12·8)·5) + 12·8·(3·49 + 2·25 + 2·35) = 150672; per encoder token / 7.
TEST(T5Training, ModelFlopsCountEachParameterOnItsRows) {
  model::TransformerConfig m;
  m.family = model::ModelFamily::kT5;
  m.num_layers = 2;
  m.encoder_num_layers = 3;
  m.hidden_size = 8;
  m.num_attention_heads = 2;
  m.ffn_hidden_size = 12;
  m.seq_length = 7;
  m.decoder_seq_length = 5;
  m.vocab_size = 11;
  m.make_vocab_size_divisible_by = 4;
  model::ParameterRegistry reg;
  model::GPTModel(m).register_parameters(reg);
  const ModelFlops f = model_flops(reg, m);
  EXPECT_EQ(f.parameters, m.parameter_count());
  EXPECT_NEAR(f.flops_per_token, 150672.0 / 7.0, 1e-9);
  EXPECT_NE(model_flops_formula(m).find("Te"), std::string::npos);
}

}  // namespace
}  // namespace shardlm::train
