// GPT model: whole-model gradients against central finite differences (fp64), Megatron
// parameter names and counts, layout-independent initialisation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <span>
#include <string>

#include "shardlm/model/families/gpt_model.h"
#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

using testing::random_ints;

TransformerConfig tiny_config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.seq_length = 5;
  c.vocab_size = 11;
  c.make_vocab_size_divisible_by = 4;  // padded vocab 12: padding rows exist and get gradients
  c.ffn_hidden_size = 12;
  c.hidden_dropout = 0.0;
  c.attention_dropout = 0.0;
  c.init_method_std = 0.3;  // large enough that layers are far from identity
  return c;
}

struct Harness {
  TransformerConfig cfg;
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  std::unique_ptr<GPTModel> model;
  Arena acts;
  OwnedTensor tokens, targets, mask;
  OwnedTensor types, lengths, order;  // BERT only
  OwnedTensor encoder_tokens, encoder_lengths;  // T5 only
  double mask_sum = 0;
  int64_t B = 2;

  explicit Harness(const TransformerConfig& c, uint64_t seed = 7) : cfg(c) {
    model = std::make_unique<GPTModel>(cfg);
    model->register_parameters(reg);
    reg.finalize(ctx, DType::kF64, seed);
    model->bind(reg);
    acts = Arena(Device::cpu(), model->plan_activation_bytes(DType::kF64, B), "acts");
    model->allocate_activations(acts, DType::kF64, B);
    // T5: tokens / targets / mask are the decoder's; the encoder's second sequence is padded
    // after 3 tokens.
    const int64_t T = cfg.t5() ? cfg.decoder_seq_length : cfg.seq_length;
    tokens = random_ints({B, T}, static_cast<int32_t>(cfg.vocab_size), 11);
    targets = random_ints({B, T}, static_cast<int32_t>(cfg.vocab_size), 12);
    std::vector<double> m(B * T);
    if (cfg.t5()) {
      encoder_tokens = random_ints({B, cfg.seq_length}, static_cast<int32_t>(cfg.vocab_size), 14);
      encoder_lengths = OwnedTensor::empty(DType::kI32, {B});
      encoder_lengths.view().data<int32_t>()[0] = static_cast<int32_t>(cfg.seq_length);
      encoder_lengths.view().data<int32_t>()[1] = 3;
    }
    for (size_t i = 0; i < m.size(); ++i) m[i] = (i % 3 == 1) ? 0.0 : 1.0;  // some masked
    if (cfg.bert()) {
      // BERT: the second sequence is padded after 3 tokens; padding is never in the loss.
      lengths = OwnedTensor::empty(DType::kI32, {B});
      lengths.view().data<int32_t>()[0] = static_cast<int32_t>(cfg.seq_length);
      lengths.view().data<int32_t>()[1] = 3;
      for (int64_t t = 3; t < cfg.seq_length; ++t) m[cfg.seq_length + t] = 0.0;
      types = random_ints({B, cfg.seq_length}, 2, 13);
      order = OwnedTensor::empty(DType::kI32, {B});
      order.view().data<int32_t>()[0] = 1;
      order.view().data<int32_t>()[1] = 0;
    }
    for (double v : m) mask_sum += v;
    mask = testing::from_vector(DType::kF64, {B, T}, m);
  }
  Batch batch() const {
    Batch b{tokens.view(), targets.view(), mask.view(), mask_sum};
    if (cfg.t5()) {
      b.encoder_tokens = encoder_tokens.view();
      b.encoder_lengths = encoder_lengths.view();
    }
    if (cfg.bert()) {
      b.key_lengths = lengths.view();
      if (cfg.has_binary_head()) {
        b.token_types = types.view();
        b.sentence_order = order.view();
      }
    }
    return b;
  }
  double loss(bool training = true) {
    StepContext step{ctx, 99, 3, 1, training};
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
    EXPECT_LT(testing::rel_error(analytic, numeric), 1e-6) << p.spec.name;
  }
}

TEST(GPTModel, GradientsMatchFiniteDifferencesTied) {
  expect_gradients_match_finite_differences(tiny_config());
}

TEST(GPTModel, GradientsMatchFiniteDifferencesUntiedGqaWithDropout) {
  TransformerConfig c = tiny_config();
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.kv_channels = 3;  // head dim independent of hidden size
  c.untie_embeddings_and_output_weights = true;
  c.hidden_dropout = 0.2;   // masks are keyed, so finite differences see the same masks
  c.attention_dropout = 0.3;
  expect_gradients_match_finite_differences(c);
}

TEST(GPTModel, GradientsMatchFiniteDifferencesRmsNormSwigluNoBias) {
  TransformerConfig c = tiny_config();
  c.normalization = Normalization::kRMSNorm;
  c.swiglu = true;
  c.add_bias_linear = false;
  c.num_query_groups = 1;
  c.position_embedding = PositionEmbedding::kNone;
  expect_gradients_match_finite_differences(c);
}

TEST(GPTModel, LossIsMaskedMeanOfTokenLosses) {
  Harness h(tiny_config());
  const double loss = h.loss();
  const auto per_token = testing::to_vector(h.model->token_losses());
  const auto mask = testing::to_vector(h.mask.view());
  double s = 0;
  for (size_t i = 0; i < mask.size(); ++i) s += per_token[i] * mask[i];
  EXPECT_NEAR(loss, s / h.mask_sum, 1e-12);
  // A freshly initialised model predicts close to uniform over the padded vocab.
  EXPECT_NEAR(loss, std::log(12.0), 1.5);
}

// The grad-ready hook reports every parameter exactly once, in reverse registration order, and
// only once its gradient for the micro-batch is final (compared with the gradient at the end).
void expect_grad_ready_order(const TransformerConfig& cfg) {
  Harness h(cfg);
  h.reg.zero_grads(h.ctx);
  std::vector<std::string> order;
  std::map<std::string, std::vector<double>> at_report;
  h.model->set_grad_ready_callback([&](std::span<Parameter* const> params) {
    ASSERT_FALSE(params.empty());
    for (Parameter* p : params) {
      order.push_back(p->spec.name);
      at_report[p->spec.name] = testing::to_vector(p->grad);
    }
  });
  StepContext step{h.ctx, 99, 3, 1, true};
  h.model->forward(step, h.batch());
  h.model->backward(step, h.batch(), 1.0);
  const auto& params = h.reg.parameters();
  ASSERT_EQ(order.size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = params[params.size() - 1 - i];
    EXPECT_EQ(order[i], p.spec.name);
    EXPECT_EQ(at_report[p.spec.name], testing::to_vector(p.grad)) << p.spec.name;
  }
}

TEST(GPTModel, GradReadyCallbackTied) { expect_grad_ready_order(tiny_config()); }

// Untied output layer, RMSNorm (no biases), no position embedding.
TransformerConfig untied_rmsnorm_config() {
  TransformerConfig c = tiny_config();
  c.untie_embeddings_and_output_weights = true;
  c.normalization = Normalization::kRMSNorm;
  c.position_embedding = PositionEmbedding::kNone;
  return c;
}

TEST(GPTModel, GradReadyCallbackUntiedRmsNorm) { expect_grad_ready_order(untied_rmsnorm_config()); }

// The parameters-needed hook (--overlap-param-gather) reports every parameter before the
// forward reads it: with every weight poisoned (NaN) and each restored only when reported, the
// forward gives exactly the loss of the intact model. First reports come in registration
// (= forward) order.
void expect_params_needed_before_use(const TransformerConfig& cfg) {
  Harness h(cfg);
  const double want = h.loss(false);
  std::map<std::string, std::vector<double>> saved;
  for (Parameter& p : h.reg.parameters()) {
    saved[p.spec.name] = testing::to_vector(p.compute_value);
    ops::fill(h.ctx, p.compute_value, std::nan(""));
  }
  std::vector<std::string> first_reports;
  h.model->set_params_needed_callback([&](std::span<Parameter* const> params) {
    ASSERT_FALSE(params.empty());
    for (Parameter* p : params) {
      if (std::find(first_reports.begin(), first_reports.end(), p->spec.name) ==
          first_reports.end())
        first_reports.push_back(p->spec.name);
      const std::vector<double>& v = saved.at(p->spec.name);
      std::copy(v.begin(), v.end(), p->compute_value.data<double>());
    }
  });
  EXPECT_EQ(h.loss(false), want);
  const auto& params = h.reg.parameters();
  ASSERT_EQ(first_reports.size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) EXPECT_EQ(first_reports[i], params[i].spec.name);
}

TEST(GPTModel, ParamsNeededCallbackTied) { expect_params_needed_before_use(tiny_config()); }

TEST(GPTModel, ParamsNeededCallbackUntiedRmsNorm) {
  expect_params_needed_before_use(untied_rmsnorm_config());
}

TEST(GPTModel, EvaluationDisablesDropout) {
  TransformerConfig c = tiny_config();
  c.hidden_dropout = 0.5;
  Harness h(c);
  TransformerConfig c0 = tiny_config();
  Harness h0(c0);
  EXPECT_EQ(h.loss(false), h0.loss(false));
  EXPECT_NE(h.loss(true), h0.loss(true));
}

TEST(GPTModel, MegatronParameterNamesAndCount) {
  TransformerConfig c = tiny_config();
  c.untie_embeddings_and_output_weights = true;
  GPTModel model(c);
  ParameterRegistry reg;
  model.register_parameters(reg);
  for (const char* name :
       {"embedding.word_embeddings.weight", "embedding.position_embeddings.weight",
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_bias",
        "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.0.self_attention.linear_qkv.bias",
        "decoder.layers.1.self_attention.linear_proj.weight",
        "decoder.layers.1.mlp.linear_fc1.layer_norm_weight", "decoder.layers.1.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.linear_fc2.bias", "decoder.final_layernorm.weight",
        "output_layer.weight"})
    EXPECT_TRUE(reg.contains(name)) << name;
  EXPECT_EQ(reg.get("embedding.word_embeddings.weight").spec.global_shape, Shape({12, 8}));
  EXPECT_FALSE(reg.get("decoder.layers.0.self_attention.linear_qkv.bias").spec.weight_decay);
  EXPECT_FALSE(reg.get("decoder.final_layernorm.weight").spec.weight_decay);
  EXPECT_TRUE(reg.get("decoder.layers.0.mlp.linear_fc1.weight").spec.weight_decay);
  EXPECT_EQ(reg.numel(), c.parameter_count());
}

TEST(GPTModel, OutputProjectionsUseScaledInit) {
  TransformerConfig c = tiny_config();
  c.hidden_size = 64;
  c.num_layers = 8;
  c.init_method_std = 0.02;
  Harness h(c);
  auto stddev = [&](const std::string& name) {
    const auto v = testing::to_vector(h.reg.get(name).value);
    double sq = 0;
    for (double x : v) sq += x * x;
    return std::sqrt(sq / static_cast<double>(v.size()));
  };
  EXPECT_NEAR(stddev("decoder.layers.0.mlp.linear_fc1.weight"), 0.02, 0.002);
  EXPECT_NEAR(stddev("decoder.layers.0.mlp.linear_fc2.weight"), 0.02 / 4.0, 0.0005);
  EXPECT_NEAR(stddev("decoder.layers.3.self_attention.linear_proj.weight"), 0.02 / 4.0, 0.0005);
  EXPECT_EQ(testing::to_vector(h.reg.get("decoder.final_layernorm.weight").value),
            std::vector<double>(64, 1.0));
}

// ---- BERT (TransformerConfig::family = kBert) ----------------------------------------------
TransformerConfig bert_config(bool binary_head = true) {
  TransformerConfig c = tiny_config();
  c.family = ModelFamily::kBert;
  c.bert_binary_head = binary_head;
  return c;
}

TEST(BertModel, GradientsMatchFiniteDifferencesWithBinaryHead) {
  expect_gradients_match_finite_differences(bert_config());
}

TEST(BertModel, GradientsMatchFiniteDifferencesWithoutBinaryHeadUntiedRmsNorm) {
  TransformerConfig c = bert_config(false);
  c.untie_embeddings_and_output_weights = true;
  c.normalization = Normalization::kRMSNorm;
  c.attention_dropout = 0.2;  // same masks in every evaluation of the loss
  expect_gradients_match_finite_differences(c);
}

TEST(BertModel, GradReadyAndParamsNeededOrder) {
  expect_grad_ready_order(bert_config());
  expect_params_needed_before_use(bert_config());
  expect_grad_ready_order(bert_config(false));
}

// The loss is Megatron's pretrain_bert loss: the masked mean of the token losses plus the mean
// sentence-order loss; the sentence-order part is a two-class cross-entropy per sequence.
TEST(BertModel, LossIsMaskedLmMeanPlusSentenceOrderMean) {
  Harness h(bert_config());
  const double loss = h.loss(false);
  const auto per_token = testing::to_vector(h.model->token_losses());
  const auto mask = testing::to_vector(h.mask.view());
  double s = 0;
  for (size_t i = 0; i < mask.size(); ++i) s += per_token[i] * mask[i];
  const double sop = h.model->last_sop_loss();
  EXPECT_NEAR(loss, s / h.mask_sum + sop, 1e-12);
  // Per sequence k the two labels' probabilities add to one: with losses summed over the two
  // sequences, l(1,0) - l(0,0) = log(p_0(0) / p_0(1)) gives p_0(0), likewise p_1(0), and then
  // l(0,0) must equal -log p_0(0) - log p_1(0).
  const auto sop_sum = [&](int32_t first, int32_t second) {
    h.order.view().data<int32_t>()[0] = first;
    h.order.view().data<int32_t>()[1] = second;
    h.loss(false);
    return h.model->last_sop_loss() * 2;
  };
  const double l00 = sop_sum(0, 0), l10 = sop_sum(1, 0), l01 = sop_sum(0, 1);
  const double p0 = 1.0 / (1.0 + std::exp(-(l10 - l00)));
  const double p1 = 1.0 / (1.0 + std::exp(-(l01 - l00)));
  EXPECT_NEAR(l00, -std::log(p0) - std::log(p1), 1e-10);
  EXPECT_GT(std::abs(l10 - l00), 1e-6);  // the head's output depends on the input
}

// Padding (positions >= the sequence's length) is no key: changing those tokens changes no loss.
// Attention is bidirectional: a later token changes an earlier position's loss.
TEST(BertModel, PaddingIsMaskedAndAttentionIsBidirectional) {
  Harness h(bert_config());
  const double base = h.loss(false);
  const auto base_tokens = testing::to_vector(h.model->token_losses());
  const int64_t T = h.cfg.seq_length;
  for (int64_t t = 3; t < T; ++t)
    h.tokens.view().data<int32_t>()[T + t] = (h.tokens.view().data<int32_t>()[T + t] + 5) % 11;
  EXPECT_EQ(h.loss(false), base);
  h.tokens.view().data<int32_t>()[T - 1] = (h.tokens.view().data<int32_t>()[T - 1] + 1) % 11;
  h.loss(false);
  EXPECT_NE(testing::to_vector(h.model->token_losses())[0], base_tokens[0]);
}

TEST(BertModel, MegatronParameterNamesAndCount) {
  for (bool binary : {true, false}) {
    TransformerConfig c = bert_config(binary);
    GPTModel model(c);
    ParameterRegistry reg;
    model.register_parameters(reg);
    for (const char* name : {"lm_head.dense.weight", "lm_head.dense.bias",
                             "lm_head.layer_norm.weight", "lm_head.layer_norm.bias",
                             "output_layer.bias"})
      EXPECT_TRUE(reg.contains(name)) << name;
    for (const char* name : {"embedding.tokentype_embeddings.weight", "pooler.dense.weight",
                             "pooler.dense.bias", "binary_head.weight", "binary_head.bias"})
      EXPECT_EQ(reg.contains(name), binary) << name;
    if (binary) {
      EXPECT_EQ(reg.get("embedding.tokentype_embeddings.weight").spec.global_shape,
                Shape({2, 8}));
      EXPECT_EQ(reg.get("binary_head.weight").spec.global_shape, Shape({2, 8}));
    }
    EXPECT_EQ(reg.get("output_layer.bias").spec.global_shape, Shape({12}));
    EXPECT_EQ(reg.numel(), c.parameter_count()) << binary;
  }
}

TEST(BertModel, BatchWithoutBinaryHeadFieldsIsAClearError) {
  Harness h(bert_config());
  Batch b = h.batch();
  b.sentence_order = Tensor();
  StepContext step{h.ctx, 99, 3, 1, false};
  EXPECT_SHARDLM_ERROR(h.model->forward(step, b), ErrorKind::kInvalidArgument,
                       "--bert-no-binary-head");
  b = h.batch();
  b.token_types = Tensor();
  EXPECT_SHARDLM_ERROR(h.model->forward(step, b), ErrorKind::kInvalidArgument, "token_types");
}

TEST(ParameterRegistry, ShardsInitialiseEqualToSlicesOfTheFullTensor) {
  ParameterSpec full{"decoder.layers.0.mlp.linear_fc1.weight", {6, 4}, Split::none(), true,
                     Init::normal(1.0)};
  Parameter whole;
  whole.spec = full;
  whole.local_shape = full.global_shape;
  OwnedTensor w = OwnedTensor::empty(DType::kF64, full.global_shape);
  initialize_parameter(whole, 5, w.view());
  const auto all = testing::to_vector(w.view());
  for (int dim : {0, 1}) {
    for (int rank = 0; rank < 2; ++rank) {
      Parameter shard;
      shard.spec = full;
      shard.spec.split = {dim, rank, 2};
      shard.local_shape = dim == 0 ? Shape{3, 4} : Shape{6, 2};
      OwnedTensor s = OwnedTensor::empty(DType::kF64, shard.local_shape);
      initialize_parameter(shard, 5, s.view());
      const auto part = testing::to_vector(s.view());
      for (int64_t i = 0; i < shard.local_shape.numel(); ++i)
        EXPECT_EQ(part[i], all[shard.global_index(i)]);
    }
  }
}

TEST(ParameterRegistry, ExplicitRunShardsInitialiseEqualToTheirRowsOfTheFullTensor) {
  // Replicated query groups: rank 1 of 4 with one group holds q rows [2, 4) and k, v [8, 12).
  ParameterSpec full{"decoder.layers.0.self_attention.linear_qkv.weight", {12, 3}, Split::none(),
                     true, Init::normal(0.5)};
  Parameter whole;
  whole.spec = full;
  whole.local_shape = full.global_shape;
  OwnedTensor w = OwnedTensor::empty(DType::kF32, full.global_shape);
  initialize_parameter(whole, 9, w.view());
  const auto all = testing::to_vector(w.view());
  Parameter shard;
  shard.spec = full;
  shard.spec.split = Split::of_runs(0, 1, 4, {{2, 2, false}, {8, 4, true}});
  shard.local_shape = Shape{6, 3};
  OwnedTensor s = OwnedTensor::empty(DType::kF32, shard.local_shape);
  initialize_parameter(shard, 9, s.view());
  const auto part = testing::to_vector(s.view());
  for (int64_t i = 0; i < shard.local_shape.numel(); ++i)
    EXPECT_EQ(part[i], all[shard.global_index(i)]) << "element " << i;
  EXPECT_EQ(part[0], all[6]);  // local row 0 = global row 2
}

TEST(ParameterRegistry, IndexMapIsTheGlobalIndexForEverySplit) {
  // The arithmetic the CUDA init kernel runs (ShardIndexMap) against Parameter::global_index.
  const Shape global{12, 6, 4};
  for (int dim = 0; dim < 3; ++dim) {
    for (int size : {1, 2}) {
      for (int chunks : {1, 2}) {
        for (int rank = 0; rank < size; ++rank) {
          if (global[dim] % (size * chunks) != 0) continue;
          Parameter p;
          p.spec = {"x", global, Split::along(dim, rank, size, chunks), true, Init::normal(1)};
          std::vector<int64_t> dims = global.dims();
          dims[dim] /= size;
          p.local_shape = Shape(dims);
          const ShardIndexMap m = p.index_map();
          for (int64_t i = 0; i < p.local_shape.numel(); ++i)
            ASSERT_EQ(m.global_index(i), p.global_index(i))
                << "dim " << dim << " size " << size << " chunks " << chunks << " rank " << rank
                << " element " << i;
        }
      }
    }
  }
}

TEST(ParameterRegistry, FlatBuffersAndErrors) {
  ParameterRegistry reg;
  reg.add({"a", {2, 3}, Split::none(), true, Init::normal(1)});
  reg.add({"b", {4}, Split::none(), false, Init::ones()});
  EXPECT_THROW(reg.add({"a", {1}, Split::none(), true, Init::zeros()}), Error);
  EXPECT_THROW(reg.add({"c", {5}, Split{0, 0, 2}, true, Init::zeros()}), Error);
  DeviceContext ctx = DeviceContext::cpu();
  reg.finalize(ctx, DType::kF32, 1);
  EXPECT_EQ(reg.numel(), 10);
  EXPECT_EQ(reg.get("b").value.raw(),
            static_cast<char*>(reg.flat_values().raw()) + 6 * sizeof(float));
  EXPECT_THROW(reg.get("missing"), Error);
}

TEST(ParameterRegistry, ComputeCopyIsSeparateOnlyForAnotherDtype) {
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry same;
  same.add({"a", {2, 3}, Split::none(), true, Init::normal(1)});
  same.finalize(ctx, DType::kF32, 1, DType::kF32);
  EXPECT_FALSE(same.has_compute_copy());
  EXPECT_EQ(same.compute_dtype(), DType::kF32);
  EXPECT_EQ(same.get("a").compute_value.raw(), same.get("a").value.raw());
  EXPECT_EQ(same.get("a").compute_grad.raw(), same.get("a").grad.raw());
  EXPECT_EQ(same.compute_copy_bytes(), 0u);
  same.sync_compute_values(ctx);       // no-ops
  same.accumulate_compute_grads(ctx);
}

// The --bf16 bookkeeping on the host (the CPU backend converts bf16 in ops::copy): compute
// values are the rounded master values; compute grads fold into the fp32 master grads and reset.
TEST(ParameterRegistry, Bf16ComputeCopyRoundsValuesAndAccumulatesGrads) {
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  reg.add({"a", {2, 3}, Split::none(), true, Init::normal(1)});
  reg.add({"b", {4}, Split::none(), false, Init::ones()});
  reg.finalize(ctx, DType::kF32, 7, DType::kBF16);
  ASSERT_TRUE(reg.has_compute_copy());
  EXPECT_EQ(reg.dtype(), DType::kF32);
  EXPECT_EQ(reg.compute_dtype(), DType::kBF16);
  const Parameter& a = reg.get("a");
  EXPECT_EQ(a.compute_value.dtype(), DType::kBF16);
  EXPECT_EQ(a.compute_grad.dtype(), DType::kBF16);
  EXPECT_EQ(a.compute_value.shape(), a.value.shape());
  auto bf16_at = [](const Tensor& t, int64_t i) {
    return bf16_bits_to_float(static_cast<const uint16_t*>(t.raw())[i]);
  };
  auto set_bf16 = [](const Tensor& t, int64_t i, float v) {
    static_cast<uint16_t*>(t.raw())[i] = float_to_bf16_bits(v);
  };
  const Tensor& flat = reg.flat_values();
  for (int64_t i = 0; i < reg.numel(); ++i) {
    const float master = flat.data<float>()[i];
    EXPECT_EQ(bf16_at(reg.get(i < 6 ? "a" : "b").compute_value, i < 6 ? i : i - 6),
              bf16_bits_to_float(float_to_bf16_bits(master)));
  }
  // Two micro-batches of compute grads accumulate into the fp32 master grads.
  for (int m = 1; m <= 2; ++m) {
    for (int64_t i = 0; i < 6; ++i) set_bf16(a.compute_grad, i, 0.5f * m * (i + 1));
    reg.accumulate_compute_grads(ctx);
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(bf16_at(a.compute_grad, i), 0.0f);
  }
  for (int64_t i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(a.grad.data<float>()[i], 1.5f * (i + 1));
  EXPECT_EQ(reg.get("b").grad.data<float>()[0], 0.0f);
  // A master update reaches the compute copy only at sync.
  reg.get("b").value.data<float>()[1] = 3.0f;
  EXPECT_EQ(bf16_at(reg.get("b").compute_value, 1), 1.0f);
  reg.sync_compute_values(ctx);
  EXPECT_EQ(bf16_at(reg.get("b").compute_value, 1), 3.0f);
  set_bf16(a.compute_grad, 0, 2.0f);
  reg.zero_grads(ctx);
  EXPECT_EQ(a.grad.data<float>()[0], 0.0f);
  EXPECT_EQ(bf16_at(a.compute_grad, 0), 0.0f);
  EXPECT_GT(reg.compute_copy_bytes(), 0u);
}

// The per-parameter fold (the grad-ready hook's) touches exactly that parameter: its master
// grads gain the converted compute grads (the fp32 sum), its compute grads are zeroed, and every
// other parameter's compute and master grads are left as they were.
TEST(ParameterRegistry, PerParameterFoldTouchesOnlyThatParameter) {
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  reg.add({"a", {3, 5}, Split::none(), true, Init::normal(1)});
  reg.add({"b", {7}, Split::none(), false, Init::ones()});
  reg.add({"c", {2, 2}, Split::none(), true, Init::normal(1)});
  reg.finalize(ctx, DType::kF32, 3, DType::kBF16);
  std::map<std::string, std::vector<double>> master_before, compute_before;
  uint64_t seed = 10;
  for (Parameter& p : reg.parameters()) {
    ops::copy(ctx, p.grad, testing::random_tensor(DType::kF32, p.local_shape, seed++).view());
    ops::copy(ctx, p.compute_grad,
              testing::random_tensor(DType::kBF16, p.local_shape, seed++).view());
    master_before[p.spec.name] = testing::to_vector(p.grad);
    compute_before[p.spec.name] = testing::to_vector(p.compute_grad);
  }
  reg.accumulate_compute_grads(ctx, reg.get("b"));
  for (const Parameter& p : reg.parameters()) {
    const std::vector<double> master = testing::to_vector(p.grad);
    const std::vector<double> compute = testing::to_vector(p.compute_grad);
    const std::vector<double>& m0 = master_before[p.spec.name];
    const std::vector<double>& c0 = compute_before[p.spec.name];
    for (size_t i = 0; i < master.size(); ++i) {
      if (p.spec.name == "b") {
        EXPECT_EQ(master[i], static_cast<double>(static_cast<float>(m0[i]) +
                                                 static_cast<float>(c0[i])))
            << i;
        EXPECT_EQ(compute[i], 0.0) << i;
      } else {
        EXPECT_EQ(master[i], m0[i]) << p.spec.name << " " << i;
        EXPECT_EQ(compute[i], c0[i]) << p.spec.name << " " << i;
      }
    }
  }
}

// begin_step_grads leaves last step's master gradients in place and the step's first fold of
// each parameter assigns (whole-buffer fold or per parameter), later folds add; end_step_grads
// zeroes a parameter no fold reached, so nothing of the last step survives. Stale master
// values are random, so an accumulate where an assign belongs shows.
TEST(ParameterRegistry, FirstFoldOfAStepAssigns) {
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  reg.add({"a", {3, 5}, Split::none(), true, Init::normal(1)});
  reg.add({"b", {7}, Split::none(), false, Init::ones()});
  reg.add({"c", {2, 2}, Split::none(), true, Init::normal(1)});
  reg.finalize(ctx, DType::kF32, 3, DType::kBF16);
  uint64_t seed = 40;
  auto dirty_masters = [&] {
    for (Parameter& p : reg.parameters())
      ops::copy(ctx, p.grad, testing::random_tensor(DType::kF32, p.local_shape, seed++).view());
  };
  auto set_compute = [&](Parameter& p) {
    ops::copy(ctx, p.compute_grad,
              testing::random_tensor(DType::kBF16, p.local_shape, seed++).view());
    return testing::to_vector(p.compute_grad);
  };
  // Whole-buffer folds: assign, then add.
  dirty_masters();
  reg.begin_step_grads(ctx);
  std::map<std::string, std::vector<double>> first, second;
  for (Parameter& p : reg.parameters()) first[p.spec.name] = set_compute(p);
  reg.accumulate_compute_grads(ctx);
  for (Parameter& p : reg.parameters()) second[p.spec.name] = set_compute(p);
  reg.accumulate_compute_grads(ctx);
  reg.end_step_grads(ctx);
  for (const Parameter& p : reg.parameters()) {
    const std::vector<double> master = testing::to_vector(p.grad);
    for (size_t i = 0; i < master.size(); ++i)
      EXPECT_EQ(master[i], static_cast<double>(static_cast<float>(first[p.spec.name][i]) +
                                               static_cast<float>(second[p.spec.name][i])))
          << p.spec.name << " " << i;
    for (double v : testing::to_vector(p.compute_grad)) EXPECT_EQ(v, 0.0);
  }
  // Mixed: "a" folded alone (assigns), then a whole-buffer fold with some masters filled (per
  // parameter: a adds, b and c assign).
  dirty_masters();
  reg.begin_step_grads(ctx);
  const std::vector<double> a1 = set_compute(reg.get("a"));
  reg.accumulate_compute_grads(ctx, reg.get("a"));
  const std::vector<double> a2 = set_compute(reg.get("a"));
  const std::vector<double> b1 = set_compute(reg.get("b"));
  reg.accumulate_compute_grads(ctx);  // a: adds; b: assigns; c: assigns its zero compute grads
  const std::vector<double> a = testing::to_vector(reg.get("a").grad);
  const std::vector<double> b = testing::to_vector(reg.get("b").grad);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i], static_cast<double>(static_cast<float>(a1[i]) + static_cast<float>(a2[i])));
  EXPECT_EQ(b, b1);
  for (double v : testing::to_vector(reg.get("c").grad)) EXPECT_EQ(v, 0.0);
  // A step in which no fold ran: end_step_grads zeroes every (dirty) master gradient.
  reg.begin_step_grads(ctx);
  dirty_masters();
  reg.end_step_grads(ctx);
  for (const Parameter& p : reg.parameters())
    for (double v : testing::to_vector(p.grad)) EXPECT_EQ(v, 0.0) << p.spec.name;
}

// Gradient-accumulation fusion, on the CPU with fp64 master / fp32 compute copies: the Linear's
// weight gradient is written into the fp64 master gradient by its GEMM (no fp32 compute
// gradient exists for it), the bias still folds; over two steps of two micro-batches every
// master gradient and din equal the unfused run's bit for bit, and a parameter no backward
// reached is zeroed at the end of the step in both.
TEST(ParameterRegistry, GradientAccumulationFusionEqualsFoldingBitForBit) {
  DeviceContext ctx = DeviceContext::cpu();
  constexpr int64_t N = 6, IC = 10, OC = 7;
  struct Run {
    ParameterRegistry reg;
    Linear fc{"fc", IC, OC, /*bias=*/true, Init::normal(0.5)};
    Linear unused{"unused", IC, OC, /*bias=*/false, Init::normal(0.5)};
  };
  Run fused, plain;
  plain.reg.set_gradient_accumulation_fusion(false);
  for (Run* r : {&fused, &plain}) {
    r->fc.register_parameters(r->reg);
    r->unused.register_parameters(r->reg);
    r->reg.finalize(ctx, DType::kF64, 5, DType::kF32);
    r->fc.bind(r->reg);
    r->unused.bind(r->reg);
  }
  EXPECT_TRUE(fused.reg.get("fc.weight").main_grad_fused);
  EXPECT_FALSE(fused.reg.get("fc.weight").compute_grad.defined());
  EXPECT_FALSE(fused.reg.get("fc.bias").main_grad_fused);
  EXPECT_FALSE(plain.reg.get("fc.weight").main_grad_fused);
  EXPECT_EQ(fused.reg.compute_grad_numel(), OC);  // the bias only
  EXPECT_EQ(plain.reg.compute_grad_numel(), plain.reg.numel());
  uint64_t seed = 70;
  for (int step = 0; step < 2; ++step) {
    for (Run* r : {&fused, &plain}) {  // stale masters: the first micro-batch must assign
      for (Parameter& p : r->reg.parameters())
        ops::copy(ctx, p.grad, testing::random_tensor(DType::kF64, p.local_shape, 99).view());
      r->reg.begin_step_grads(ctx);
    }
    for (int mb = 0; mb < 2; ++mb) {
      const OwnedTensor in = testing::random_tensor(DType::kF32, {N, IC}, seed++);
      const OwnedTensor dout = testing::random_tensor(DType::kF32, {N, OC}, seed++);
      OwnedTensor din_fused = OwnedTensor::zeros(DType::kF32, {N, IC});
      OwnedTensor din_plain = OwnedTensor::zeros(DType::kF32, {N, IC});
      fused.fc.backward(ctx, din_fused, dout, in);
      plain.fc.backward(ctx, din_plain, dout, in);
      EXPECT_EQ(testing::to_vector(din_fused), testing::to_vector(din_plain));
      fused.reg.accumulate_compute_grads(ctx);
      plain.reg.accumulate_compute_grads(ctx);
    }
    fused.reg.end_step_grads(ctx);
    plain.reg.end_step_grads(ctx);
    for (const char* name : {"fc.weight", "fc.bias", "unused.weight"}) {
      SCOPED_TRACE(std::string(name) + " step " + std::to_string(step));
      const std::vector<double> f = testing::to_vector(fused.reg.get(name).grad);
      EXPECT_EQ(f, testing::to_vector(plain.reg.get(name).grad));
      const bool zero = std::string(name) == "unused.weight";
      EXPECT_EQ(f == std::vector<double>(f.size(), 0.0), zero);  // not vacuous
    }
  }
}

// Gradient-accumulation fusion of the word embedding (CPU mixed precision: fp64 master, fp32
// compute), over two steps of two micro-batches with stale master gradients at each step's start
// and few distinct tokens (rows share them): fused, the word embedding has no compute gradient
// and its lookup's scatter-add (and, tied, the output GEMM) writes the master gradient, assigning
// on the step's first contribution (untied: the scatter-add itself, which zeroes it first).
// Every other master gradient equals the unfused run's bit for bit; the word embedding's agrees
// within fp32 rounding (the unfused run rounds each row's add to fp32 before the fold).
void expect_fused_word_embedding_tracks_unfused(const TransformerConfig& cfg) {
  constexpr int64_t B = 2;
  struct Run {
    DeviceContext ctx = DeviceContext::cpu();
    ParameterRegistry reg;
    std::unique_ptr<GPTModel> model;
    Arena acts;
  };
  Run fused, plain;
  plain.reg.set_gradient_accumulation_fusion(false);
  for (Run* r : {&fused, &plain}) {
    r->model = std::make_unique<GPTModel>(cfg);
    r->model->register_parameters(r->reg);
    r->reg.finalize(r->ctx, DType::kF64, 7, DType::kF32);
    r->model->bind(r->reg);
    r->acts = Arena(Device::cpu(), r->model->plan_activation_bytes(DType::kF32, B), "acts");
    r->model->allocate_activations(r->acts, DType::kF32, B);
  }
  const char* kWte = "embedding.word_embeddings.weight";
  EXPECT_TRUE(fused.reg.get(kWte).main_grad_fused);
  EXPECT_FALSE(fused.reg.get(kWte).compute_grad.defined());
  EXPECT_FALSE(plain.reg.get(kWte).main_grad_fused);
  if (fused.reg.contains("embedding.position_embeddings.weight"))
    EXPECT_FALSE(fused.reg.get("embedding.position_embeddings.weight").main_grad_fused);
  const int64_t T = cfg.seq_length;
  std::vector<double> m(B * T, 1.0);
  m[3] = 0.0;
  const OwnedTensor mask = testing::from_vector(DType::kF32, {B, T}, m);
  uint64_t seed = 40;
  for (int step = 0; step < 2; ++step) {
    for (Run* r : {&fused, &plain}) {  // stale masters: the first contribution must assign
      for (Parameter& p : r->reg.parameters())
        ops::copy(r->ctx, p.grad, testing::random_tensor(DType::kF64, p.local_shape, 99).view());
      r->reg.begin_step_grads(r->ctx);
    }
    for (uint32_t mb = 0; mb < 2; ++mb) {
      const OwnedTensor tokens = random_ints({B, T}, 3, seed++);  // ids 0..2: repeated
      const OwnedTensor targets =
          random_ints({B, T}, static_cast<int32_t>(cfg.vocab_size), seed++);
      const Batch batch{tokens.view(), targets.view(), mask.view(), B * T - 1.0};
      double losses[2];
      for (Run* r : {&fused, &plain}) {
        StepContext s{r->ctx, 99, static_cast<uint32_t>(step), mb, true};
        losses[r == &plain] = r->model->forward(s, batch);
        r->model->backward(s, batch, 0.5);
        r->reg.accumulate_compute_grads(r->ctx);
      }
      EXPECT_EQ(losses[0], losses[1]);  // the compute weights are the same
    }
    for (Run* r : {&fused, &plain}) r->reg.end_step_grads(r->ctx);
    for (const Parameter& p : fused.reg.parameters()) {
      SCOPED_TRACE(p.spec.name + " step " + std::to_string(step));
      const std::vector<double> f = testing::to_vector(p.grad);
      const std::vector<double> u = testing::to_vector(plain.reg.get(p.spec.name).grad);
      if (p.spec.name == kWte) {
        EXPECT_LT(testing::rel_error(f, u), 1e-6);
        EXPECT_NE(f, u);  // the unfused run's fp32 roundings are real
      } else {
        EXPECT_EQ(f, u);
      }
    }
  }
}

TEST(GPTModel, FusedWordEmbeddingGradientTracksTheUnfusedTied) {
  expect_fused_word_embedding_tracks_unfused(tiny_config());
}

TEST(GPTModel, FusedWordEmbeddingGradientTracksTheUnfusedUntied) {
  expect_fused_word_embedding_tracks_unfused(untied_rmsnorm_config());
}

TEST(TransformerConfig, ValidationNamesTheFlag) {
  auto message = [](TransformerConfig c) {
    try {
      c.validate();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      return std::string(e.what());
    }
    return std::string();
  };
  TransformerConfig c = tiny_config();
  c.hidden_size = 10;
  c.num_attention_heads = 3;
  EXPECT_NE(message(c).find("--hidden-size 10 is not divisible by --num-attention-heads 3"),
            std::string::npos);
  c = tiny_config();
  c.num_query_groups = 3;
  EXPECT_NE(message(c).find("--num-query-groups 3"), std::string::npos);
  c = tiny_config();
  c.max_position_embeddings = 4;
  EXPECT_NE(message(c).find("--seq-length 5 exceeds --max-position-embeddings 4"),
            std::string::npos);
  c = tiny_config();
  c.num_layers = 0;
  EXPECT_NE(message(c).find("--num-layers 0"), std::string::npos);
  c = tiny_config();
  c.vocab_size = 50257;
  c.make_vocab_size_divisible_by = 128;
  EXPECT_EQ(c.padded_vocab_size(), 50304);  // GPT-2's well-known padded size
  c.tensor_model_parallel_size = 8;
  EXPECT_EQ(c.padded_vocab_size(), 51200);
}

// ---- T5 (TransformerConfig::family = kT5) --------------------------------------------------
// Encoder of 3 layers over 7 tokens (the second sequence padded after 3), decoder of 2 layers
// over 5 tokens with cross-attention.
TransformerConfig t5_config() {
  TransformerConfig c = tiny_config();
  c.family = ModelFamily::kT5;
  c.seq_length = 7;
  c.decoder_seq_length = 5;
  c.encoder_num_layers = 3;
  return c;
}

TEST(T5Model, GradientsMatchFiniteDifferences) { expect_gradients_match_finite_differences(t5_config()); }

TEST(T5Model, GradientsMatchFiniteDifferencesWithDropoutRmsNormNoBias) {
  TransformerConfig c = t5_config();
  c.hidden_dropout = 0.2;  // keyed masks: finite differences see the same ones
  c.attention_dropout = 0.3;
  c.normalization = Normalization::kRMSNorm;
  c.add_bias_linear = false;
  c.kv_channels = 3;
  c.seq_length = 5;  // encoder as long as the decoder
  c.encoder_num_layers = 1;
  expect_gradients_match_finite_differences(c);
}

// Megatron's T5 with --position-embedding-type rope: the self-attentions rotate q and k (the
// encoder's positions and the decoder's), the cross-attention does not (Megatron passes it no
// rotary embedding); SwiGLU MLPs.
TEST(T5Model, GradientsMatchFiniteDifferencesRopeSwiglu) {
  TransformerConfig c = t5_config();
  c.position_embedding = PositionEmbedding::kRope;
  c.swiglu = true;
  c.encoder_num_layers = 1;
  c.num_layers = 1;
  expect_gradients_match_finite_differences(c);
}

TEST(T5Model, GradReadyAndParamsNeededOrder) {
  expect_grad_ready_order(t5_config());
  expect_params_needed_before_use(t5_config());
}

// The encoder's padding is masked (in its self-attention and in the decoder's cross-attention):
// changing padded encoder tokens leaves every decoder loss bit for bit; the decoder is causal:
// changing decoder token t changes no loss before t.
TEST(T5Model, EncoderPaddingIsMaskedAndDecoderIsCausal) {
  Harness h(t5_config());
  const double loss = h.loss(false);
  const std::vector<double> losses = testing::to_vector(h.model->token_losses());
  int32_t* enc = h.encoder_tokens.view().data<int32_t>();
  for (int64_t t = 3; t < 7; ++t) enc[7 + t] = (enc[7 + t] + 5) % 11;  // sequence 1's padding
  EXPECT_EQ(h.loss(false), loss);
  EXPECT_EQ(testing::to_vector(h.model->token_losses()), losses);
  enc[7 + 1] = (enc[7 + 1] + 5) % 11;  // a real encoder token changes the decoder's losses
  h.loss(false);
  const std::vector<double> enc_changed = testing::to_vector(h.model->token_losses());
  for (int64_t t = 0; t < 5; ++t) EXPECT_NE(enc_changed[5 + t], losses[5 + t]) << t;
  enc[7 + 1] = (enc[7 + 1] + 6) % 11;  // back to the original
  h.tokens.view().data<int32_t>()[5 + 2] = (h.tokens.view().data<int32_t>()[5 + 2] + 3) % 11;
  h.loss(false);
  const std::vector<double> dec_changed = testing::to_vector(h.model->token_losses());
  for (int64_t t = 0; t < 5; ++t) {
    EXPECT_EQ(dec_changed[t], losses[t]) << "other sequence, position " << t;
    if (t < 2)
      EXPECT_EQ(dec_changed[5 + t], losses[5 + t]) << "position " << t << " sees the future";
    else
      EXPECT_NE(dec_changed[5 + t], losses[5 + t]) << t;
  }
}

TEST(T5Model, MegatronParameterNamesAndCount) {
  const TransformerConfig c = t5_config();
  GPTModel model(c);
  ParameterRegistry reg;
  model.register_parameters(reg);
  for (const char* name :
       {"embedding.word_embeddings.weight", "embedding.position_embeddings.weight",
        "encoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
        "encoder.layers.2.mlp.linear_fc2.weight", "encoder.final_layernorm.weight",
        "encoder.final_layernorm.bias", "decoder.layers.0.self_attention.linear_qkv.weight",
        "decoder.layers.1.pre_cross_attn_layernorm.weight",
        "decoder.layers.1.pre_cross_attn_layernorm.bias",
        "decoder.layers.1.cross_attention.linear_q.weight",
        "decoder.layers.1.cross_attention.linear_q.bias",
        "decoder.layers.1.cross_attention.linear_kv.weight",
        "decoder.layers.1.cross_attention.linear_proj.weight",
        "decoder.layers.1.mlp.linear_fc1.weight", "decoder.final_layernorm.weight",
        "lm_head.output_layer.bias"})
    EXPECT_TRUE(reg.contains(name)) << name;
  EXPECT_FALSE(reg.contains("encoder.layers.3.self_attention.linear_qkv.weight"));
  EXPECT_FALSE(reg.contains("output_layer.weight"));  // tied
  EXPECT_FALSE(reg.contains("encoder.layers.0.cross_attention.linear_q.weight"));
  EXPECT_FALSE(reg.contains("encoder.layers.0.pre_cross_attn_layernorm.weight"));
  EXPECT_EQ(reg.get("decoder.layers.0.cross_attention.linear_kv.weight").spec.global_shape,
            Shape({16, 8}));
  EXPECT_EQ(reg.get("embedding.position_embeddings.weight").spec.global_shape, Shape({7, 8}));
  EXPECT_EQ(reg.numel(), c.parameter_count());
}

TEST(T5Model, UnsupportedConfigurationsSayWhy) {
  auto expect_refused = [](TransformerConfig c, const std::string& needle) {
    try {
      GPTModel model(c);
      ADD_FAILURE() << "accepted; expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  TransformerConfig c = t5_config();
  c.decoder_seq_length = 0;
  expect_refused(c, "--decoder-seq-length");
  c = t5_config();
  c.decoder_seq_length = 9;  // longer than the position table (max positions = 7)
  expect_refused(c, "--max-position-embeddings");
  c = t5_config();
  c.num_query_groups = 1;
  expect_refused(c, "grouped-query");
  c = t5_config();
  c.untie_embeddings_and_output_weights = true;
  expect_refused(c, "--untie-embeddings-and-output-weights");
  c = t5_config();
  try {
    GPTModel model(c, TensorParallel{}, ModelChunk{0, 1, true, false});
    ADD_FAILURE() << "a T5 pipeline chunk was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--pipeline-model-parallel-size"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace shardlm::model
