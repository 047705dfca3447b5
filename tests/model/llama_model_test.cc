// Llama-shaped GPT model (RMSNorm, SwiGLU, RoPE, grouped-query attention, untied output layer,
// no linear biases, --kv-channels independent of hidden/heads): whole-model gradients against
// central finite differences (fp64) for both RoPE layouts and partial rotation; no position
// table; RoPE changes the function; a tiny Llama learns, on the CPU, a task that needs relative
// positions (continue a period-3 pattern: next token = the token two back).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <iostream>
#include <memory>
#include <sstream>

#include "shardlm/model/families/gpt_model.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/train/trainer.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

using testing::random_ints;

TransformerConfig tiny_llama() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;  // GQA
  c.kv_channels = 4;       // NH*HS = 16 != hidden 8: QKV and proj shapes follow kv_channels
  c.ffn_hidden_size = 12;
  c.seq_length = 6;
  c.vocab_size = 11;
  c.make_vocab_size_divisible_by = 4;
  c.normalization = Normalization::kRMSNorm;
  c.swiglu = true;
  c.add_bias_linear = false;
  c.untie_embeddings_and_output_weights = true;
  c.position_embedding = PositionEmbedding::kRope;
  c.rotary_base = 10000.0;
  c.hidden_dropout = 0.0;
  c.attention_dropout = 0.0;
  c.init_method_std = 0.3;
  return c;
}

struct Harness {
  TransformerConfig cfg;
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  std::unique_ptr<GPTModel> model;
  Arena acts;
  OwnedTensor tokens, targets, mask;
  double mask_sum = 0;
  int64_t B = 2;

  explicit Harness(const TransformerConfig& c, uint64_t seed = 7) : cfg(c) {
    cfg.validate();
    model = std::make_unique<GPTModel>(cfg);
    model->register_parameters(reg);
    reg.finalize(ctx, DType::kF64, seed);
    model->bind(reg);
    acts = Arena(Device::cpu(), model->plan_activation_bytes(DType::kF64, B), "acts");
    model->allocate_activations(acts, DType::kF64, B);
    tokens = random_ints({B, cfg.seq_length}, static_cast<int32_t>(cfg.vocab_size), 11);
    targets = random_ints({B, cfg.seq_length}, static_cast<int32_t>(cfg.vocab_size), 12);
    std::vector<double> m(B * cfg.seq_length);
    for (size_t i = 0; i < m.size(); ++i) m[i] = (i % 4 == 2) ? 0.0 : 1.0;
    for (double v : m) mask_sum += v;
    mask = testing::from_vector(DType::kF64, {B, cfg.seq_length}, m);
  }
  Batch batch() const { return {tokens.view(), targets.view(), mask.view(), mask_sum}; }
  double loss() {
    StepContext step{ctx, 99, 3, 1, true};
    return model->forward(step, batch());
  }
};

void expect_gradients_match_finite_differences(const TransformerConfig& cfg) {
  Harness h(cfg);
  h.reg.zero_grads(h.ctx);
  StepContext step{h.ctx, 99, 3, 1, true};
  h.model->forward(step, h.batch());
  h.model->backward(step, h.batch(), 1.0);
  for (const Parameter& p : h.reg.parameters()) {
    const std::vector<double> analytic = testing::to_vector(p.grad);
    const std::vector<double> numeric =
        testing::finite_difference(p.value, [&] { return h.loss(); }, 1e-5);
    double norm = 0;
    for (double v : numeric) norm += v * v;
    EXPECT_GT(norm, 0.0) << p.spec.name << ": zero gradient, the check would be vacuous";
    EXPECT_LT(testing::rel_error(analytic, numeric), 1e-6) << p.spec.name;
  }
}

TEST(LlamaModel, GradientsMatchFiniteDifferencesRotateHalf) {
  expect_gradients_match_finite_differences(tiny_llama());
}

TEST(LlamaModel, GradientsMatchFiniteDifferencesInterleavedPartialRotaryWithDropout) {
  TransformerConfig c = tiny_llama();
  c.rotary_interleaved = true;
  c.rotary_percent = 0.5;  // rotary dim 2 of head dim 4
  c.rotary_base = 50.0;
  c.num_query_groups = 1;  // multi-query attention
  c.hidden_dropout = 0.2;  // keyed masks: finite differences see the same masks
  c.attention_dropout = 0.2;
  expect_gradients_match_finite_differences(c);
}

TEST(LlamaModel, HasNoPositionTableAndMatchesParameterCount) {
  const TransformerConfig c = tiny_llama();
  GPTModel model(c);
  ParameterRegistry reg;
  model.register_parameters(reg);
  EXPECT_FALSE(reg.contains("embedding.position_embeddings.weight"));
  EXPECT_FALSE(reg.contains("decoder.layers.0.self_attention.linear_qkv.bias"));
  EXPECT_FALSE(reg.contains("decoder.layers.0.self_attention.linear_qkv.layer_norm_bias"));
  EXPECT_TRUE(reg.contains("output_layer.weight"));
  // QKV rows (NH + 2G) * HS = (4 + 4) * 4; proj [C, NH*HS]; fc1 [2F, C] (SwiGLU).
  EXPECT_EQ(reg.get("decoder.layers.0.self_attention.linear_qkv.weight").spec.global_shape,
            Shape({32, 8}));
  EXPECT_EQ(reg.get("decoder.layers.0.self_attention.linear_proj.weight").spec.global_shape,
            Shape({8, 16}));
  EXPECT_EQ(reg.get("decoder.layers.1.mlp.linear_fc1.weight").spec.global_shape, Shape({24, 8}));
  EXPECT_EQ(reg.numel(), c.parameter_count());
}

TEST(LlamaModel, RopeChangesTheFunctionAndLayoutsDiffer) {
  // Same parameters (RoPE adds none): the losses must differ, or RoPE was not applied.
  TransformerConfig none = tiny_llama();
  none.position_embedding = PositionEmbedding::kNone;
  TransformerConfig interleaved = tiny_llama();
  interleaved.rotary_interleaved = true;
  Harness a(tiny_llama()), b(none), c(interleaved);
  const double la = a.loss(), lb = b.loss(), lc = c.loss();
  EXPECT_GT(std::abs(la - lb), 1e-6);
  EXPECT_GT(std::abs(la - lc), 1e-6);
  // Position 0 is never rotated: the first token's loss is the same with and without RoPE.
  EXPECT_NEAR(testing::to_vector(a.model->token_losses())[0],
              testing::to_vector(b.model->token_losses())[0], 1e-12);
}

// Llama 3.x RoPE scaling (head dim 4, base 50: wavelengths 6.3 and 44, so with original context
// 16 and frequency factors 1 / 4 one pair is blended and one divided; the kept band is covered by
// tests/ops/rope_test.cc) and linear interpolation: the model's gradients still match finite
// differences, and each changes the function (so the layer really uses the scaled table).
TEST(LlamaModel, RopeScalingGradientsMatchFiniteDifferencesAndChangeTheLoss) {
  TransformerConfig scaled = tiny_llama();
  scaled.rotary_base = 50.0;
  scaled.use_rope_scaling = true;
  scaled.rope_scaling_factor = 4.0;
  scaled.rope_scaling_original_max_positions = 16;
  scaled.rotary_seq_len_interpolation_factor = 1.5;
  expect_gradients_match_finite_differences(scaled);
  TransformerConfig plain = scaled;
  plain.use_rope_scaling = false;
  TransformerConfig no_interp = scaled;
  no_interp.rotary_seq_len_interpolation_factor = 1.0;
  Harness a(scaled), b(plain), c(no_interp);
  const double la = a.loss();
  EXPECT_GT(std::abs(la - b.loss()), 1e-6);
  EXPECT_GT(std::abs(la - c.loss()), 1e-6);
}

TEST(LlamaModel, RejectsBadRopeScaling) {
  auto expect_rejected = [](const TransformerConfig& c, const std::string& flag) {
    try {
      c.validate();
      ADD_FAILURE() << "accepted; expected an error naming " << flag;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  TransformerConfig c = tiny_llama();
  c.use_rope_scaling = true;
  c.rope_scaling_high_freq_factor = 0.5;  // not above the low frequency factor (1)
  expect_rejected(c, "--rope-scaling-high-freq-factor");
  c = tiny_llama();
  c.rotary_seq_len_interpolation_factor = 0.0;
  expect_rejected(c, "--rotary-seq-len-interpolation-factor");
  c = tiny_llama();
  c.position_embedding = PositionEmbedding::kLearnedAbsolute;
  c.use_rope_scaling = true;
  expect_rejected(c, "--position-embedding-type rope");
}

TEST(LlamaModel, RejectsOddRotaryDim) {
  TransformerConfig c = tiny_llama();
  c.rotary_percent = 0.25;  // head dim 4 -> rotary dim 1
  try {
    c.validate();
    FAIL() << "rotary dim 1 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("--rotary-percent"), std::string::npos) << e.what();
  }
}

// Period-3 sequences a b c a b c ...: from the third target on, the next token is the one two
// positions back; the first two targets are unpredictable and masked out. A model needs relative
// position to solve it, which with no position table only RoPE provides.
class Period3 : public data::SampleSource {
 public:
  Period3(int64_t n, int64_t seq, int64_t vocab, uint64_t seed)
      : n_(n), seq_(seq), vocab_(vocab), seed_(seed) {}
  int64_t size() const override { return n_; }
  int64_t seq_length() const override { return seq_; }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> mask) const override {
    int32_t pattern[3];
    for (uint64_t j = 0; j < 3; ++j)
      pattern[j] = static_cast<int32_t>(
          mix64(seed_ ^ mix64(static_cast<uint64_t>(index) * 3 + j)) % static_cast<uint64_t>(vocab_));
    for (int64_t k = 0; k <= seq_; ++k) tokens[k] = pattern[k % 3];
    for (int64_t k = 0; k < seq_; ++k) mask[k] = k < 2 ? 0.0f : 1.0f;
  }

 private:
  int64_t n_, seq_, vocab_;
  uint64_t seed_;
};

train::TrainConfig tiny_llama_run() {
  train::TrainConfig cfg;
  cfg.model.num_layers = 2;
  cfg.model.hidden_size = 32;
  cfg.model.num_attention_heads = 4;
  cfg.model.num_query_groups = 2;
  cfg.model.ffn_hidden_size = 64;
  cfg.model.seq_length = 12;
  cfg.model.vocab_size = 32;
  cfg.model.make_vocab_size_divisible_by = 32;
  cfg.model.normalization = Normalization::kRMSNorm;
  cfg.model.swiglu = true;
  cfg.model.add_bias_linear = false;
  cfg.model.untie_embeddings_and_output_weights = true;
  cfg.model.position_embedding = PositionEmbedding::kRope;
  cfg.model.hidden_dropout = 0.0;
  cfg.model.attention_dropout = 0.0;
  cfg.micro_batch_size = 8;
  cfg.global_batch_size = 8;
  cfg.train_iters = 600;
  cfg.optimizer.lr = 1e-2;
  cfg.optimizer.min_lr = 1e-3;
  cfg.optimizer.lr_decay_style = "cosine";
  cfg.optimizer.lr_warmup_iters = 10;
  cfg.optimizer.weight_decay = 0.01;
  cfg.logging.log_interval = 50;
  cfg.logging.eval_interval = 100;
  cfg.logging.eval_iters = 2;
  cfg.device = "cpu";
  cfg.data.mock_data = true;  // satisfies validation; the sources below are injected
  return cfg;
}

// Trains cfg on the period-3 task; returns (first loss, mean of the last 10, final validation).
std::array<double, 3> train_period3(const train::TrainConfig& cfg) {
  std::ostringstream log;
  train::Trainer trainer(cfg, log, std::make_unique<Period3>(100000, 12, 32, 1),
                         std::make_unique<Period3>(1000, 12, 32, 2));
  trainer.train();
  const auto& h = trainer.history();
  double last = 0;
  for (size_t i = h.size() - 10; i < h.size(); ++i) last += h[i].loss / 10;
  return {h.front().loss, last, trainer.evaluations().back().loss};
}

TEST(LlamaModel, TinyLlamaLearnsARelativePositionTask) {
  const auto [first, last, eval] = train_period3(tiny_llama_run());
  std::cout << "tiny Llama (rope), period-3 task: first loss " << first << ", mean of last 10 "
            << last << ", final validation " << eval << " (ln 32 = " << std::log(32.0) << ")\n";
  EXPECT_GT(first, 3.0);
  EXPECT_LT(last, 0.3);
  EXPECT_LT(eval, 0.3);
  // Control: the same model without RoPE (no position information at all).
  train::TrainConfig none = tiny_llama_run();
  none.model.position_embedding = PositionEmbedding::kNone;
  const auto [first0, last0, eval0] = train_period3(none);
  std::cout << "control (no positions): first loss " << first0 << ", final validation " << eval0
            << "\n";
  EXPECT_GT(eval0, eval + 1.0) << "RoPE should be what makes the task learnable";
}

}  // namespace
}  // namespace shardlm::model
