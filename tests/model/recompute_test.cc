// Activation recomputation (model/recompute.h): every granularity / method gives bit-identical
// losses and gradients to the run that stores everything (same ops, same dropout masks), while
// planning fewer activation bytes; bad flag combinations are rejected by name.
#include "shardlm/model/recompute.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/model/families/gpt_model.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

TransformerConfig config() {
  TransformerConfig c;
  c.num_layers = 5;  // chunks of 2 leave a short last chunk
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.seq_length = 7;
  c.vocab_size = 23;
  c.make_vocab_size_divisible_by = 8;
  c.hidden_dropout = 0.2;
  c.attention_dropout = 0.25;
  c.init_method_std = 0.2;
  return c;
}

struct RecomputeRun {
  double loss = 0;
  std::vector<double> grads;
  size_t activation_bytes = 0;
};

// Two micro-batches (forward + backward each) of a fresh model with `recompute`.
RecomputeRun train_two_microbatches(const RecomputeConfig& recompute) {
  const TransformerConfig cfg = config();
  const int64_t B = 3;
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  GPTModel model(cfg);
  model.set_recompute(recompute);
  model.register_parameters(reg);
  reg.finalize(ctx, DType::kF64, 5);
  model.bind(reg);
  RecomputeRun r;
  r.activation_bytes = model.plan_activation_bytes(DType::kF64, B);
  Arena acts(Device::cpu(), r.activation_bytes, "acts");
  model.allocate_activations(acts, DType::kF64, B);
  reg.zero_grads(ctx);
  for (uint32_t m = 0; m < 2; ++m) {
    OwnedTensor tokens = testing::random_ints({B, cfg.seq_length}, 23, 10 + m);
    OwnedTensor targets = testing::random_ints({B, cfg.seq_length}, 23, 20 + m);
    std::vector<double> ones(B * cfg.seq_length, 1.0);
    OwnedTensor mask = testing::from_vector(DType::kF64, {B, cfg.seq_length}, ones);
    Batch batch{tokens.view(), targets.view(), mask.view(), static_cast<double>(ones.size())};
    StepContext step{ctx, 42, 3, m, true};
    r.loss += model.forward(step, batch);
    model.backward(step, batch, 0.5);
  }
  r.grads = testing::to_vector(reg.flat_grads());
  return r;
}

RecomputeConfig make(const char* granularity, const char* method, int64_t n) {
  RecomputeConfig c;
  c.granularity = granularity;
  c.method = method;
  c.num_layers = n;
  return c;
}

TEST(Recompute, EveryModeGivesBitIdenticalLossAndGradients) {
  const RecomputeRun reference = train_two_microbatches({});
  double grad_abs = 0;
  for (double g : reference.grads) grad_abs += std::abs(g);
  ASSERT_GT(grad_abs, 0.0);
  // saves: whether the mode stores fewer bytes. A uniform chunk of all 5 layers, or a block of
  // 1 recomputed layer, needs one whole set of layer activations at a time in backward anyway
  // (as in Megatron, whose peak then also equals the no-recompute one for one micro-batch).
  struct Mode {
    RecomputeConfig config;
    bool saves;
  };
  for (const Mode& mode :
       {Mode{make("selective", "", 0), true}, Mode{make("full", "uniform", 1), true},
        Mode{make("full", "uniform", 2), true}, Mode{make("full", "uniform", 5), false},
        Mode{make("full", "block", 1), false}, Mode{make("full", "block", 3), true}}) {
    const RecomputeConfig& c = mode.config;
    SCOPED_TRACE(c.granularity + " " + c.method + " " + std::to_string(c.num_layers));
    const RecomputeRun r = train_two_microbatches(c);
    EXPECT_EQ(r.loss, reference.loss);
    EXPECT_EQ(r.grads, reference.grads);
    if (mode.saves)
      EXPECT_LT(r.activation_bytes, reference.activation_bytes);
    else
      EXPECT_EQ(r.activation_bytes, reference.activation_bytes);
  }
}

// --no-recompute-norm-activation: the norm and activation outputs are saved, not recomputed;
// alone and with each granularity, the same bits as the default, with 2 [N, C] + [N, F] more
// bytes per stored layer.
TEST(Recompute, SavingNormAndActivationOutputsGivesBitIdenticalResults) {
  const RecomputeRun reference = train_two_microbatches({});
  for (RecomputeConfig c : {make("", "", 0), make("selective", "", 0), make("full", "uniform", 2),
                            make("full", "block", 3)}) {
    SCOPED_TRACE(c.granularity + " " + c.method + " " + std::to_string(c.num_layers));
    const RecomputeRun recomputing = train_two_microbatches(c);
    c.norm_activation = false;
    const RecomputeRun saving = train_two_microbatches(c);
    EXPECT_EQ(saving.loss, reference.loss);
    EXPECT_EQ(saving.grads, reference.grads);
    EXPECT_GT(saving.activation_bytes, recomputing.activation_bytes);
  }
  RecomputeConfig saving;
  saving.norm_activation = false;
  const TransformerConfig cfg = config();
  const int64_t N = 3 * cfg.seq_length;  // B = 3 rows of the sequence, fp64
  const size_t per_layer = 2 * arena_aligned_bytes(DType::kF64, {N, cfg.hidden_size}) +
                           arena_aligned_bytes(DType::kF64, {N, cfg.ffn_size()});
  EXPECT_EQ(train_two_microbatches(saving).activation_bytes,
            reference.activation_bytes + static_cast<size_t>(cfg.num_layers) * per_layer);
}

TEST(Recompute, FullUniformStoresLessThanBlockOfFewLayers) {
  // Uniform chunks of 1 keep one layer's activations; block 1 still stores layers 1..4.
  EXPECT_LT(train_two_microbatches(make("full", "uniform", 1)).activation_bytes,
            train_two_microbatches(make("full", "block", 1)).activation_bytes);
}

TEST(Recompute, BadCombinationsAreNamed) {
  auto message = [](const RecomputeConfig& c) {
    try {
      c.validate(4);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message(make("full", "", 0)).find("needs --recompute-method"), std::string::npos);
  EXPECT_NE(message(make("selective", "block", 0)).find("full only"), std::string::npos);
  EXPECT_NE(message(make("", "uniform", 2)).find("full only"), std::string::npos);
  EXPECT_NE(message(make("sometimes", "", 0)).find("selective, full"), std::string::npos);
  EXPECT_NE(message(make("full", "uniform", 5)).find("exceeds the model's 4 layers"),
            std::string::npos);
  EXPECT_EQ(message(make("full", "block", 4)), "");
}

}  // namespace
}  // namespace shardlm::model
