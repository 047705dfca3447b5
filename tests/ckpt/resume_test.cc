// Trainer + checkpoints (CPU, fp32): 20 iterations straight equal 10 + save + a NEW Trainer +
// load + 10, bit for bit (losses, validation losses, parameters), with synchronous and
// asynchronous saves and dropout on; --finetune, --no-load-optim, config mismatch and a
// checkpoint without optimizer state behave as Megatron's flags say.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <sstream>

#include "ckpt_test_util.h"
#include "shardlm/base/error.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

using ckpt::testing::TempDir;

TrainConfig tiny_run() {
  TrainConfig c;
  c.model.num_layers = 2;
  c.model.hidden_size = 32;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 16;
  c.model.vocab_size = 64;
  c.model.make_vocab_size_divisible_by = 64;
  c.model.hidden_dropout = 0.1;  // dropout on: its Philox streams must resume exactly
  c.model.attention_dropout = 0.1;
  c.micro_batch_size = 2;
  c.global_batch_size = 4;
  c.train_iters = 20;
  c.optimizer.lr = 3e-3;
  c.optimizer.min_lr = 3e-4;
  c.optimizer.lr_decay_style = "cosine";
  c.optimizer.lr_warmup_iters = 3;
  c.data.mock_data = true;
  c.logging.log_interval = 5;
  c.logging.eval_interval = 5;
  c.logging.eval_iters = 1;
  c.device = "cpu";
  c.seed = 4321;
  return c;
}

std::vector<float> flat_values(Trainer& t) {
  const Tensor& v = t.parameters().flat_values();
  return std::vector<float>(v.data<float>(), v.data<float>() + v.numel());
}

struct RunResult {
  std::vector<IterationRecord> history;
  std::vector<EvalRecord> evals;
  std::vector<float> params;
};

RunResult straight() {
  std::ostringstream log;
  Trainer t(tiny_run(), log);
  t.train();
  return {t.history(), t.evaluations(), flat_values(t)};
}

// 10 iterations, save, exit; a new trainer loads and finishes.
RunResult split(const std::string& dir, bool async) {
  RunResult r;
  {
    TrainConfig c = tiny_run();
    c.checkpoint.save = dir;
    c.checkpoint.exit_interval = 10;
    c.checkpoint.async_save = async;
    std::ostringstream log;
    Trainer t(c, log);
    t.train();
    EXPECT_EQ(t.iteration(), 10);
    r.history = t.history();
    r.evals = t.evaluations();
  }
  TrainConfig c = tiny_run();
  c.checkpoint.load = dir;
  // Same --seed as the first run (it also orders the data, as in Megatron).
  std::ostringstream log;
  Trainer t(c, log);
  EXPECT_EQ(t.iteration(), 10);
  EXPECT_NE(log.str().find("loaded checkpoint"), std::string::npos) << log.str();
  t.train();
  r.history.insert(r.history.end(), t.history().begin(), t.history().end());
  r.evals.insert(r.evals.end(), t.evaluations().begin(), t.evaluations().end());
  r.params = flat_values(t);
  return r;
}

void expect_identical(const RunResult& a, const RunResult& b) {
  ASSERT_EQ(a.history.size(), b.history.size());
  for (size_t i = 0; i < a.history.size(); ++i) {
    EXPECT_EQ(a.history[i].iteration, b.history[i].iteration);
    EXPECT_EQ(a.history[i].loss, b.history[i].loss) << "iteration " << i + 1;
    EXPECT_EQ(a.history[i].grad_norm, b.history[i].grad_norm) << "iteration " << i + 1;
    EXPECT_EQ(a.history[i].lr, b.history[i].lr) << "iteration " << i + 1;
  }
  ASSERT_EQ(a.evals.size(), b.evals.size());
  for (size_t i = 0; i < a.evals.size(); ++i) EXPECT_EQ(a.evals[i].loss, b.evals[i].loss);
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.params.size() * 4), 0);
}

TEST(Resume, TwentyStraightEqualsTenSaveLoadTen) {
  const RunResult a = straight();
  TempDir dir;
  const RunResult b = split(dir.str(), /*async=*/false);
  expect_identical(a, b);
  EXPECT_EQ(ckpt::CheckpointReader::latest_iteration(dir.str()), 10);
  ckpt::CheckpointReader(dir.str(), 10).verify_files();
}

TEST(Resume, AsyncSaveGivesTheSameResult) {
  const RunResult a = straight();
  TempDir dir;
  const RunResult b = split(dir.str(), /*async=*/true);
  expect_identical(a, b);
}

TEST(Resume, FinetuneLoadsWeightsOnlyAndBadLoadsAreRefused) {
  TempDir dir;
  std::vector<float> saved;
  {
    TrainConfig c = tiny_run();
    c.train_iters = 3;
    c.optimizer.lr_warmup_iters = 1;
    c.checkpoint.save = dir.str();
    c.checkpoint.no_save_optim = true;
    std::ostringstream log;
    Trainer t(c, log);
    t.train();
    saved = flat_values(t);
  }
  ASSERT_EQ(ckpt::CheckpointReader::latest_iteration(dir.str()), 3);
  {  // --finetune: the weights, iteration 0
    TrainConfig c = tiny_run();
    c.checkpoint.load = dir.str();
    c.checkpoint.finetune = true;
    std::ostringstream log;
    Trainer t(c, log);
    EXPECT_EQ(t.iteration(), 0);
    const std::vector<float> loaded = flat_values(t);
    EXPECT_EQ(std::memcmp(loaded.data(), saved.data(), saved.size() * 4), 0);
  }
  {  // no optimizer state in the checkpoint: a plain resume says what to do
    TrainConfig c = tiny_run();
    c.checkpoint.load = dir.str();
    std::ostringstream log;
    try {
      Trainer t(c, log);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      EXPECT_NE(std::string(e.what()).find("--finetune"), std::string::npos) << e.what();
    }
    c.checkpoint.no_load_optim = true;  // keeps the iteration, fresh moments
    Trainer t(c, log);
    EXPECT_EQ(t.iteration(), 3);
  }
  {  // model flags that disagree with the checkpoint: the error names the flag
    TrainConfig c = tiny_run();
    c.model.hidden_size = 48;
    c.checkpoint.load = dir.str();
    c.checkpoint.finetune = true;
    std::ostringstream log;
    try {
      Trainer t(c, log);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      EXPECT_NE(std::string(e.what()).find("--hidden-size"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("32"), std::string::npos) << e.what();
    }
  }
  {  // --load of an empty directory starts from scratch (as Megatron)
    TempDir empty;
    TrainConfig c = tiny_run();
    c.checkpoint.load = empty.str();
    std::ostringstream log;
    Trainer t(c, log);
    EXPECT_EQ(t.iteration(), 0);
    EXPECT_NE(log.str().find("training from scratch"), std::string::npos);
  }
}

TEST(Resume, ExitSignalSavesAtTheEndOfTheStep) {
  TempDir dir;
  TrainConfig c = tiny_run();
  c.checkpoint.save = dir.str();
  c.checkpoint.exit_signal_handler = true;
  std::ostringstream log;
  Trainer t(c, log);
  t.train_step();
  t.train_step();
  TEST_raise_exit_signal();
  t.train();  // one more step, then save and stop
  TEST_clear_exit_signal();
  EXPECT_EQ(t.iteration(), 3);
  EXPECT_EQ(ckpt::CheckpointReader::latest_iteration(dir.str()), 3);
  EXPECT_NE(log.str().find("exit signal received"), std::string::npos) << log.str();
}

}  // namespace
}  // namespace shardlm::train
