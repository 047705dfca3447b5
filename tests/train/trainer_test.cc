// Trainer: a tiny GPT learns a learnable synthetic task (and does not learn random labels),
// runs are bit-for-bit deterministic, gradient accumulation equals one large micro-batch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "shardlm/data/mock_gpt_dataset.h"
#include "shardlm/tensor/device.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

TrainConfig tiny_run() {
  TrainConfig c;
  c.model.num_layers = 2;
  c.model.hidden_size = 32;
  c.model.num_attention_heads = 4;
  c.model.seq_length = 16;
  c.model.vocab_size = 64;
  c.model.make_vocab_size_divisible_by = 64;
  c.model.hidden_dropout = 0.0;
  c.model.attention_dropout = 0.0;
  c.micro_batch_size = 4;
  c.global_batch_size = 8;
  c.train_iters = 300;
  c.optimizer.lr = 3e-3;
  c.optimizer.min_lr = 3e-4;
  c.optimizer.lr_decay_style = "cosine";
  c.optimizer.lr_warmup_iters = 10;
  c.optimizer.weight_decay = 0.01;
  c.data.mock_data = true;
  c.logging.log_interval = 50;
  c.logging.eval_interval = 100;
  c.logging.eval_iters = 2;
  c.device = "cpu";
  return c;
}

// Random tokens: nothing to learn beyond unigram frequencies (uniform here).
class RandomTokens : public data::SampleSource {
 public:
  RandomTokens(int64_t n, int64_t seq, int64_t vocab) : n_(n), seq_(seq), vocab_(vocab) {}
  int64_t size() const override { return n_; }
  int64_t seq_length() const override { return seq_; }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> mask) const override {
    for (int64_t k = 0; k <= seq_; ++k)
      tokens[k] = static_cast<int32_t>(mix64(static_cast<uint64_t>(index * 1000 + k)) % vocab_);
    for (float& m : mask) m = 1.0f;
  }

 private:
  int64_t n_, seq_, vocab_;
};

TEST(Trainer, LearnsTheSyntheticTaskAndNotRandomLabels) {
  TrainConfig cfg = tiny_run();
  std::ostringstream log;
  Trainer learnable(cfg, log);
  learnable.train();
  const auto& h = learnable.history();
  double last = 0;
  for (size_t i = h.size() - 10; i < h.size(); ++i) last += h[i].loss / 10;
  std::cout << "learnable task: first loss " << h.front().loss << ", mean of last 10 " << last
            << ", final validation " << learnable.evaluations().back().loss << "\n";
  EXPECT_LT(last, 0.5);  // ln(64) = 4.16 at the start
  EXPECT_LT(learnable.evaluations().back().loss, 0.5);

  std::ostringstream log2;
  Trainer control(cfg, log2, std::make_unique<RandomTokens>(100000, 16, 64),
                  std::make_unique<RandomTokens>(1000, 16, 64));
  control.train();
  const double control_eval = control.evaluations().back().loss;
  std::cout << "random-label control: validation loss " << control_eval << " (ln 64 = "
            << std::log(64.0) << ")\n";
  EXPECT_GT(control_eval, std::log(64.0) - 0.1);
}

TEST(Trainer, IdenticalRunsGiveIdenticalLossBits) {
  TrainConfig cfg = tiny_run();
  cfg.train_iters = 20;
  cfg.model.hidden_dropout = 0.1;
  cfg.model.attention_dropout = 0.1;
  std::ostringstream l1, l2;
  Trainer a(cfg, l1), b(cfg, l2);
  a.train();
  b.train();
  ASSERT_EQ(a.history().size(), b.history().size());
  for (size_t i = 0; i < a.history().size(); ++i) {
    EXPECT_EQ(std::memcmp(&a.history()[i].loss, &b.history()[i].loss, sizeof(double)), 0) << i;
    EXPECT_EQ(std::memcmp(&a.history()[i].grad_norm, &b.history()[i].grad_norm, sizeof(double)),
              0);
  }
  EXPECT_EQ(std::memcmp(a.parameters().flat_values().raw(), b.parameters().flat_values().raw(),
                        a.parameters().flat_values().nbytes()),
            0);
  // A different seed changes the run.
  cfg.seed = 4321;
  std::ostringstream l3;
  Trainer c(cfg, l3);
  c.train_step();
  EXPECT_NE(c.history()[0].loss, a.history()[0].loss);
}

TEST(Trainer, GradientAccumulationEqualsOneLargeMicroBatch) {
  TrainConfig cfg = tiny_run();
  cfg.train_iters = 5;
  cfg.optimizer.lr_warmup_iters = 2;
  cfg.compute_dtype = "fp64";
  cfg.micro_batch_size = 2;
  cfg.global_batch_size = 8;  // 4 micro-batches
  std::ostringstream l1, l2;
  Trainer accumulated(cfg, l1);
  cfg.micro_batch_size = 8;   // 1 micro-batch
  Trainer single(cfg, l2);
  for (int i = 0; i < 5; ++i) {
    const auto a = accumulated.train_step();
    const auto b = single.train_step();
    EXPECT_NEAR(a.loss, b.loss, 1e-12 * std::abs(b.loss)) << i;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-10 * b.grad_norm) << i;
  }
}

TEST(Trainer, LogLinesLookLikeMegatrons) {
  TrainConfig cfg = tiny_run();
  cfg.train_iters = 4;
  cfg.optimizer.lr_warmup_iters = 1;
  cfg.logging.log_interval = 2;
  cfg.logging.eval_interval = 2;
  std::ostringstream log;
  Trainer t(cfg, log);
  t.train();
  const std::string out = log.str();
  for (const char* needle :
       {"iteration        2/       4 |", "consumed samples:           16 |",
        "elapsed time per iteration (ms):", "tokens per second:", "learning rate:",
        "global batch size:     8 |", "lm loss:", "grad norm:",
        "number of skipped iterations:   0 |", "validation loss at iteration 2 |",
        "lm loss PPL:", "> memory plan:", "> number of parameters:"})
    EXPECT_NE(out.find(needle), std::string::npos) << needle << "\n" << out;
}

}  // namespace
}  // namespace shardlm::train

namespace shardlm::train {
namespace {

std::string config_error(const TrainConfig& c) {
  try {
    std::ostringstream log;
    Trainer t(c, log);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << e.what();
    return e.what();
  }
  return "";
}

TEST(Trainer, MixedPrecisionFlagsAreRejectedWhereUnsupported) {
  TrainConfig c = tiny_run();
  c.bf16 = true;
  EXPECT_NE(config_error(c).find("--bf16 needs --device cuda"), std::string::npos);
  c.device = "auto";
  if (cuda_device_count() == 0)
    EXPECT_NE(config_error(c).find("--bf16 needs --device cuda"), std::string::npos);
  c = tiny_run();
  c.fp16 = true;
  EXPECT_NE(config_error(c).find("--fp16 needs --device cuda"), std::string::npos);
  // The rest is config validation alone (no GPU needed to reject it).
  auto validate_error = [](const TrainConfig& cfg) -> std::string {
    try {
      cfg.validate();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  c.device = "cuda";
  c.bf16 = true;
  EXPECT_NE(validate_error(c).find("--fp16 and --bf16 are both set"), std::string::npos);
  c.bf16 = false;
  EXPECT_EQ(validate_error(c), "");
  c.loss_scaler.hysteresis = 0;
  EXPECT_NE(validate_error(c).find("--hysteresis must be >= 1"), std::string::npos);
}

TEST(Trainer, LogsThePrecision) {
  TrainConfig c = tiny_run();
  std::ostringstream log;
  Trainer t(c, log);
  EXPECT_NE(log.str().find("> precision: fp32\n"), std::string::npos) << log.str();
}

}  // namespace
}  // namespace shardlm::train
