// Mixture-of-experts MLP (layers/moe_mlp.h), on the CPU in fp64:
//   - one MoeMlp's output and load-balancing loss against a float64 reference written here
//     (router logits, top-k, softmax over the k or top-k of the softmax, expert MLPs);
//   - whole-GPT gradients with MoE layers against central finite differences of the objective
//     LM loss + coefficient · load-balancing loss (GELU and SwiGLU experts, every layer or every
//     other layer MoE, with and without --moe-router-pre-softmax), which also checks that the
//     load-balancing gradient enters the router as Megatron's MoEAuxLossAutoScaler does;
//   - Megatron's parameter names and the parameter count;
//   - bad MoE configurations are rejected with a fix.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "shardlm/base/error.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/model/layers/moe_mlp.h"
#include "shardlm/ops/ops.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

using testing::random_ints;
using testing::random_tensor;
using testing::to_vector;

TransformerConfig moe_config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.seq_length = 5;
  c.vocab_size = 11;
  c.make_vocab_size_divisible_by = 4;
  c.ffn_hidden_size = 12;
  c.hidden_dropout = 0.0;
  c.attention_dropout = 0.0;
  c.init_method_std = 0.3;
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 6;
  c.moe_aux_loss_coeff = 0.1;
  return c;
}

// Fills an arena's memory with a value no buffer may be read with before it is written (e.g. a
// dropped pair's row that the layer must zero), then hands the arena back empty.
void poison(DeviceContext& ctx, Arena& arena) {
  ops::fill(ctx, arena.allocate(DType::kF64, {static_cast<int64_t>(arena.capacity() / 8)}), 7.0);
  arena.reset();
}

double gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// y[n] and the switch loss / coefficient for one MoE MLP, straight from the definitions;
// with a capacity factor each expert keeps its `capacity` pairs of highest weight (earlier token
// first on ties) or its earliest, and the loss counts the pairs routed before dropping.
struct MoeReference {
  std::vector<double> y;
  double aux = 0;
  double z = 0;  // mean over tokens of logsumexp(logits)^2
  int64_t dropped = 0;
};
MoeReference moe_reference(const TransformerConfig& c, const ParameterRegistry& reg, int layer,
                           const std::vector<double>& x, int64_t N) {
  const int64_t C = c.hidden_size, E = c.num_experts, k = c.moe_router_topk, F = c.moe_ffn_size();
  const std::string p = "decoder.layers." + std::to_string(layer) + ".mlp.";
  const std::vector<double> wr = to_vector(reg.get(p + "router.weight").value);
  MoeReference r;
  r.y.assign(static_cast<size_t>(N * C), 0.0);
  std::vector<double> counts(E, 0.0), score_sums(E, 0.0);
  struct Pair {
    int64_t n, e;
    double w;
  };
  std::vector<Pair> pairs;  // in (token, choice) order
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> logit(E, 0.0), score(E);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t h = 0; h < C; ++h) logit[e] += wr[e * C + h] * x[n * C + h];
    const double m = *std::max_element(logit.begin(), logit.end());
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += (score[e] = std::exp(logit[e] - m));
    r.z += std::pow(m + std::log(z), 2) / static_cast<double>(N);
    for (int64_t e = 0; e < E; ++e) score_sums[e] += (score[e] /= z);
    std::vector<int64_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return logit[a] > logit[b]; });
    std::vector<double> w(k);
    if (c.moe_router_pre_softmax) {
      for (int64_t i = 0; i < k; ++i) w[i] = score[order[i]];
    } else {
      double zk = 0;
      for (int64_t i = 0; i < k; ++i) zk += (w[i] = std::exp(logit[order[i]] - m));
      for (double& v : w) v /= zk;
    }
    if (c.moe_router_topk_scaling_factor > 0)
      for (double& v : w) v *= c.moe_router_topk_scaling_factor;
    for (int64_t i = 0; i < k; ++i) {
      pairs.push_back({n, order[i], w[i]});
      counts[order[i]] += 1;
    }
  }
  std::vector<char> kept(pairs.size(), 1);
  const int64_t capacity = c.moe_expert_capacity(N);
  for (int64_t e = 0; capacity > 0 && e < E; ++e) {
    std::vector<size_t> mine;
    for (size_t j = 0; j < pairs.size(); ++j)
      if (pairs[j].e == e) mine.push_back(j);
    if (!c.moe_token_drop_by_position)
      std::stable_sort(mine.begin(), mine.end(),
                       [&](size_t a, size_t b) { return pairs[a].w > pairs[b].w; });
    for (size_t j = static_cast<size_t>(capacity); j < mine.size(); ++j, ++r.dropped)
      kept[mine[j]] = 0;
  }
  for (size_t j = 0; j < pairs.size(); ++j) {
    if (!kept[j]) continue;
    const auto [n, e, weight] = pairs[j];
    const std::string q = p + "experts.local_experts." + std::to_string(e) + ".";
    const std::vector<double> w1 = to_vector(reg.get(q + "linear_fc1.weight").value);
    const std::vector<double> w2 = to_vector(reg.get(q + "linear_fc2.weight").value);
    const int64_t F1 = c.swiglu ? 2 * F : F;
    std::vector<double> h1(F1, 0.0), act(F, 0.0);
    for (int64_t f = 0; f < F1; ++f) {
      for (int64_t i = 0; i < C; ++i) h1[f] += w1[f * C + i] * x[n * C + i];
      if (c.add_bias_linear) h1[f] += to_vector(reg.get(q + "linear_fc1.bias").value)[f];
    }
    for (int64_t f = 0; f < F; ++f)
      act[f] = c.swiglu ? h1[f] / (1.0 + std::exp(-h1[f])) * h1[F + f] : gelu(h1[f]);
    for (int64_t i = 0; i < C; ++i) {
      double out = c.add_bias_linear ? to_vector(reg.get(q + "linear_fc2.bias").value)[i] : 0.0;
      for (int64_t f = 0; f < F; ++f) out += w2[i * F + f] * act[f];
      r.y[n * C + i] += weight * out;
    }
  }
  for (int64_t e = 0; e < E; ++e) r.aux += counts[e] * score_sums[e];
  r.aux *= static_cast<double>(E) / (static_cast<double>(N * N) * static_cast<double>(k));
  return r;
}

// One MoeMlp layer on the CPU in fp64 (N tokens in `sequences` sequences), its saved tensors and
// scratch in a poisoned arena; forward() returns y and adds the losses it logs.
struct MoeLayer {
  DeviceContext ctx = DeviceContext::cpu();
  MoeMlp moe;
  ParameterRegistry reg;
  Arena arena;
  MoeMlp::Saved saved;
  MoeMlp::Scratch scratch;
  double aux = 0, z = 0;

  MoeLayer(const TransformerConfig& c, int64_t N, int64_t sequences = 1) : moe(c, 0) {
    moe.register_parameters(reg);
    reg.finalize(ctx, DType::kF64, 5);
    moe.bind(reg);
    ArenaPlan plan;
    moe.allocate_saved(plan, DType::kF64, N);
    MoeMlp::allocate_scratch(c, {}, {}, plan, DType::kF64, N, sequences);
    arena = Arena(Device::cpu(), plan.bytes(), "moe");
    poison(ctx, arena);
    saved = moe.allocate_saved(arena, DType::kF64, N);
    scratch = MoeMlp::allocate_scratch(c, {}, {}, arena, DType::kF64, N, sequences);
  }
  std::vector<double> forward(const OwnedTensor& x) {
    OwnedTensor y = OwnedTensor::empty(DType::kF64, x.view().shape());
    StepContext step{ctx, 1, 0, 0, true};
    step.moe_aux_loss = &aux;
    step.moe_z_loss = &z;
    moe.forward(step, y.view(), x.view(), saved, scratch);
    return to_vector(y.view());
  }
};

void expect_moe_mlp_matches_reference(const TransformerConfig& c) {
  const int64_t N = 9, C = c.hidden_size;
  MoeLayer layer(c, N);
  const OwnedTensor x = random_tensor(DType::kF64, {N, C}, 31);
  const std::vector<double> y = layer.forward(x);
  const double aux = layer.aux, z = layer.z;
  const MoeReference ref = moe_reference(c, layer.reg, 0, to_vector(x.view()), N);
  EXPECT_LT(testing::rel_error(y, ref.y), 1e-12);
  EXPECT_NEAR(aux, ref.aux, 1e-12 * ref.aux);
  if (c.moe_z_loss_coeff > 0)
    EXPECT_NEAR(z, ref.z, 1e-12 * ref.z);
  else
    EXPECT_EQ(z, 0.0);
  if (c.moe_expert_capacity_factor > 0) EXPECT_GT(ref.dropped, 0) << "the case drops nothing";
}

TEST(MoeMlp, OutputAndLoadBalancingLossMatchReference) {
  expect_moe_mlp_matches_reference(moe_config());
}

TEST(MoeMlp, PreSoftmaxSwigluNoBiasMatchReference) {
  TransformerConfig c = moe_config();
  c.moe_router_pre_softmax = true;
  c.swiglu = true;
  c.add_bias_linear = false;
  c.moe_router_topk = 3;
  expect_moe_mlp_matches_reference(c);
}

TEST(MoeMlp, TopOneOfEightMatchesReference) {
  TransformerConfig c = moe_config();
  c.num_experts = 8;
  c.moe_router_topk = 1;
  expect_moe_mlp_matches_reference(c);
}

// Token dropping (--moe-expert-capacity-factor 0.5: 3 of a 9-token micro-batch's 18 pairs per
// expert): by router weight, and by position.
TEST(MoeMlp, CapacityFactorDropsAsTheReference) {
  TransformerConfig c = moe_config();
  c.moe_expert_capacity_factor = 0.5;
  EXPECT_EQ(c.moe_expert_capacity(9), 3);
  expect_moe_mlp_matches_reference(c);
  c.moe_token_drop_by_position = true;
  expect_moe_mlp_matches_reference(c);
  c.moe_router_pre_softmax = true;
  c.moe_expert_capacity_factor = 1.0;  // ceil(4.5) = 5
  EXPECT_EQ(c.moe_expert_capacity(9), 5);
  c.moe_token_drop_by_position = false;
  expect_moe_mlp_matches_reference(c);
}

// Whole-model gradients of LM loss + coeff · load-balancing loss (fp64, central differences).
void expect_moe_gradients_match_finite_differences(const TransformerConfig& cfg) {
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  GPTModel model(cfg);
  model.register_parameters(reg);
  reg.finalize(ctx, DType::kF64, 7);
  model.bind(reg);
  const int64_t B = 2;
  Arena acts(Device::cpu(), model.plan_activation_bytes(DType::kF64, B), "acts");
  poison(ctx, acts);
  model.allocate_activations(acts, DType::kF64, B);
  const OwnedTensor tokens = random_ints({B, cfg.seq_length}, 11, 11);
  const OwnedTensor targets = random_ints({B, cfg.seq_length}, 11, 12);
  const OwnedTensor mask = testing::from_vector(
      DType::kF64, {B, cfg.seq_length}, std::vector<double>(B * cfg.seq_length, 1.0));
  const Batch batch{tokens.view(), targets.view(), mask.view(),
                    static_cast<double>(B * cfg.seq_length)};
  const double coeff = cfg.moe_aux_coeff();
  auto objective = [&] {
    double aux = 0, z = 0;
    StepContext step{ctx, 99, 3, 1, true};
    step.moe_aux_loss = &aux;
    step.moe_z_loss = &z;
    const double lm = model.forward(step, batch);
    return lm + coeff * aux + cfg.moe_z_loss_coeff * z;
  };
  reg.zero_grads(ctx);
  StepContext step{ctx, 99, 3, 1, true};
  model.forward(step, batch);
  model.backward(step, batch, 1.0);
  for (const Parameter& p : reg.parameters()) {
    const std::vector<double> analytic = to_vector(p.grad);
    const std::vector<double> numeric = testing::finite_difference(p.value, objective, 1e-5);
    EXPECT_LT(testing::rel_error(analytic, numeric), 1e-6) << p.spec.name;
  }
}

TEST(MoeModel, GradientsMatchFiniteDifferencesGeluEveryLayer) {
  expect_moe_gradients_match_finite_differences(moe_config());
}

TEST(MoeModel, GradientsMatchFiniteDifferencesSwigluPreSoftmaxEveryOtherLayer) {
  TransformerConfig c = moe_config();
  c.swiglu = true;
  c.normalization = Normalization::kRMSNorm;
  c.add_bias_linear = false;
  c.moe_router_pre_softmax = true;
  c.moe_layer_freq = 2;  // layer 0 MoE, layer 1 dense
  c.hidden_dropout = 0.2;
  expect_moe_gradients_match_finite_differences(c);
}

// Token dropping: a dropped pair contributes nothing and its router weight gets no gradient
// (B·T = 10 tokens, capacity ceil(20/4 · 0.6) = 3 of 20 pairs per expert; the finite
// differences' 1e-5 steps do not change which pairs are kept).
TEST(MoeModel, GradientsMatchFiniteDifferencesWithDroppedTokens) {
  TransformerConfig c = moe_config();
  c.moe_expert_capacity_factor = 0.6;
  expect_moe_gradients_match_finite_differences(c);
  c.moe_token_drop_by_position = true;
  c.swiglu = true;
  expect_moe_gradients_match_finite_differences(c);
}

// The router z-loss: its value against the reference, its gradient by finite differences (a
// large coefficient, so a wrong gradient shows), with and without the load-balancing loss.
TEST(MoeModel, RouterZLossValueAndGradients) {
  TransformerConfig c = moe_config();
  c.moe_z_loss_coeff = 0.5;
  expect_moe_mlp_matches_reference(c);
  expect_moe_gradients_match_finite_differences(c);
  c.moe_aux_loss_enabled = false;
  c.moe_router_pre_softmax = true;
  expect_moe_gradients_match_finite_differences(c);
}

// --moe-router-load-balancing-type seq_aux_loss: the switch loss of each sequence's tokens,
// averaged over the sequences; the layer's output does not change.
TEST(MoeMlp, SequenceAuxLossIsTheMeanOfThePerSequenceLosses) {
  TransformerConfig c = moe_config();  // seq_length 5
  c.moe_seq_aux_loss = true;
  const int64_t B = 3, N = B * c.seq_length, C = c.hidden_size;
  MoeLayer layer(c, N, B);
  const ParameterRegistry& reg = layer.reg;
  const OwnedTensor x = random_tensor(DType::kF64, {N, C}, 41);
  const std::vector<double> y = layer.forward(x);
  const double aux = layer.aux;
  const std::vector<double> xs = to_vector(x.view());
  EXPECT_LT(testing::rel_error(y, moe_reference(c, reg, 0, xs, N).y), 1e-12);
  double want = 0;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<double> seq(xs.begin() + b * c.seq_length * C,
                                  xs.begin() + (b + 1) * c.seq_length * C);
    want += moe_reference(c, reg, 0, seq, c.seq_length).aux / static_cast<double>(B);
  }
  EXPECT_NEAR(aux, want, 1e-12 * want);
  // Not the micro-batch's switch loss.
  EXPECT_GT(std::abs(aux - moe_reference(c, reg, 0, xs, N).aux), 1e-6 * want);
}

TEST(MoeModel, GradientsMatchFiniteDifferencesWithTheSequenceAuxLoss) {
  TransformerConfig c = moe_config();
  c.moe_seq_aux_loss = true;
  c.moe_aux_loss_coeff = 0.5;
  expect_moe_gradients_match_finite_differences(c);
}

// --moe-router-topk-scaling-factor (with pre-softmax routing, as Megatron's DeepSeek recipes).
TEST(MoeModel, TopkScalingFactorScalesTheWeights) {
  TransformerConfig c = moe_config();
  c.moe_router_pre_softmax = true;
  c.moe_router_topk_scaling_factor = 2.5;
  expect_moe_mlp_matches_reference(c);
  expect_moe_gradients_match_finite_differences(c);
}

TEST(MoeModel, NoLoadBalancingLossLeavesTheRouterToTheLmLoss) {
  TransformerConfig c = moe_config();
  c.moe_aux_loss_enabled = false;  // --moe-router-load-balancing-type none
  expect_moe_gradients_match_finite_differences(c);
}

TEST(MoeModel, MegatronNamesAndParameterCount) {
  TransformerConfig c = moe_config();
  c.moe_layer_freq = 2;
  DeviceContext ctx = DeviceContext::cpu();
  ParameterRegistry reg;
  GPTModel model(c);
  model.register_parameters(reg);
  reg.finalize(ctx, DType::kF32, 1);
  int64_t total = 0;
  for (const Parameter& p : reg.parameters()) total += p.spec.global_shape.numel();
  EXPECT_EQ(total, c.parameter_count());
  const Parameter& router = reg.get("decoder.layers.0.mlp.router.weight");
  EXPECT_EQ(router.spec.global_shape, Shape({4, 8}));
  EXPECT_EQ(reg.get("decoder.layers.0.mlp.experts.local_experts.3.linear_fc1.weight")
                .spec.global_shape,
            Shape({6, 8}));
  EXPECT_EQ(reg.get("decoder.layers.0.mlp.experts.local_experts.3.linear_fc2.bias")
                .spec.global_shape,
            Shape({8}));
  EXPECT_TRUE(reg.contains("decoder.layers.0.pre_mlp_layernorm.weight"));
  EXPECT_FALSE(reg.contains("decoder.layers.0.mlp.linear_fc1.weight"));
  // Layer 1 is dense (--moe-layer-freq 2): the TE names.
  EXPECT_TRUE(reg.contains("decoder.layers.1.mlp.linear_fc1.layer_norm_weight"));
  EXPECT_TRUE(reg.contains("decoder.layers.1.mlp.linear_fc1.weight"));
  EXPECT_FALSE(reg.contains("decoder.layers.1.mlp.router.weight"));
}

TEST(MoeModel, BadConfigurationsSayWhatToChange) {
  auto message = [](const TransformerConfig& c) {
    try {
      c.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  TransformerConfig c = moe_config();
  c.moe_router_topk = 5;
  EXPECT_NE(message(c).find("--moe-router-topk 5 must be between 1 and --num-experts 4"),
            std::string::npos)
      << message(c);
  c = moe_config();
  c.moe_layer_freq = 0;
  EXPECT_NE(message(c).find("--moe-layer-freq 0 must be >= 1"), std::string::npos);
  c = moe_config();
  c.num_experts = 2000;
  c.moe_router_topk = 2;
  EXPECT_NE(message(c).find("at most 1024"), std::string::npos);
  c = moe_config();
  c.tensor_model_parallel_size = 2;
  c.moe_ffn_hidden_size = 5;
  EXPECT_NE(message(c).find("--moe-ffn-hidden-size 5 is not divisible by "
                            "--tensor-model-parallel-size 2"),
            std::string::npos)
      << message(c);
}

}  // namespace
}  // namespace shardlm::model
