// Hugging Face Llama import/export: a synthetic HF LlamaForCausalLM checkpoint (GQA, head_dim
// != hidden/heads, untied) maps element by element as hf_llama.h defines; HF -> ShardLM
// checkpoint -> HF gives identical tensors and config.json (also for the transformers fixture,
// byte for byte); a ShardLM-made Llama (tied, partial RoPE, no source config) exports and reads
// back as the same model; Llama 3.x RoPE scaling and linear interpolation convert in both config
// forms; every unsupported feature is refused naming its key; and the imported fixtures' logits
// equal transformers' (tests/golden/hf/llama_tiny, llama3_tiny).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>

#include "ckpt_test_util.h"
#include "hf_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/detail/hf_files.h"
#include "shardlm/ckpt/hf_llama.h"
#include "shardlm/ckpt/model_config_json.h"
#include "shardlm/ckpt/safetensors.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {
namespace {

using namespace testing;  // NOLINT: TempDir and the HF helpers

// head_dim 8 != hidden / heads = 6, so kv_channels is exercised; 2 query groups of 2 heads.
constexpr int64_t kC = 24, kNH = 4, kG = 2, kHS = 8, kL = 2, kV = 50, kF = 40, kP = 32;

HfTensorMap synthetic_hf() {
  std::map<std::string, std::vector<int64_t>> shapes = {{"model.embed_tokens.weight", {kV, kC}},
                                                         {"model.norm.weight", {kC}},
                                                         {"lm_head.weight", {kV, kC}}};
  for (int i = 0; i < kL; ++i) {
    const std::string h = "model.layers." + std::to_string(i) + ".";
    shapes[h + "input_layernorm.weight"] = {kC};
    shapes[h + "self_attn.q_proj.weight"] = {kNH * kHS, kC};
    shapes[h + "self_attn.k_proj.weight"] = {kG * kHS, kC};
    shapes[h + "self_attn.v_proj.weight"] = {kG * kHS, kC};
    shapes[h + "self_attn.o_proj.weight"] = {kC, kNH * kHS};
    shapes[h + "post_attention_layernorm.weight"] = {kC};
    shapes[h + "mlp.gate_proj.weight"] = {kF, kC};
    shapes[h + "mlp.up_proj.weight"] = {kF, kC};
    shapes[h + "mlp.down_proj.weight"] = {kC, kF};
  }
  return random_hf_tensors(shapes, 7);
}

// transformers 4.x style (rope_theta at the top), with every key export writes.
nlohmann::json synthetic_config() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 50,
    "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "hidden_act": "silu",
    "max_position_embeddings": 32, "rms_norm_eps": 1e-06, "rope_theta": 500000.0,
    "rope_scaling": null, "attention_bias": false, "mlp_bias": false,
    "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "float32"})");
}

void write_synthetic(const fs::path& dir, int shards = 1,
                     const nlohmann::json& patch = nlohmann::json::object()) {
  write_hf_tensors(dir, synthetic_hf(), shards);
  nlohmann::json config = synthetic_config();
  config.merge_patch(patch);
  std::ofstream(dir / "config.json") << config.dump(2);
}

const float* data(const HfTensorMap& m, const std::string& name) {
  return m.at(name).second.data();
}

TEST(HfLlama, ImportReadsTheConfig) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const model::TransformerConfig c = read_hf_llama((dir.path() / "hf").string(), 64).config;
  EXPECT_EQ(c.num_layers, kL);
  EXPECT_EQ(c.hidden_size, kC);
  EXPECT_EQ(c.num_attention_heads, kNH);
  EXPECT_EQ(c.query_groups(), kG);
  EXPECT_EQ(c.kv_channels, kHS);
  EXPECT_EQ(c.ffn_size(), kF);
  EXPECT_EQ(c.seq_length, kP);
  EXPECT_EQ(c.vocab_size, kV);
  EXPECT_EQ(c.padded_vocab_size(), 64);
  EXPECT_TRUE(c.untie_embeddings_and_output_weights);
  EXPECT_FALSE(c.add_bias_linear);
  EXPECT_TRUE(c.swiglu);
  EXPECT_EQ(c.normalization, model::Normalization::kRMSNorm);
  EXPECT_EQ(c.norm_epsilon, 1e-6);
  EXPECT_EQ(c.position_embedding, model::PositionEmbedding::kRope);
  EXPECT_EQ(c.rotary_base, 500000.0);
  EXPECT_EQ(c.rotary_percent, 1.0);
  EXPECT_FALSE(c.rotary_interleaved);
}

TEST(HfLlama, ImportMapsNamesRegroupsQkvAndStacksGateUp) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const HfTensorMap hf = synthetic_hf();
  const HfModel m = read_hf_llama((dir.path() / "hf").string(), 64);
  for (int64_t i = 0; i < kL; ++i) {
    const std::string L = "decoder.layers." + std::to_string(i) + ".";
    const std::string H = "model.layers." + std::to_string(i) + ".";
    // Megatron row of group g: [q heads g*NH/G .. (g+1)*NH/G - 1 | k_g | v_g], HS rows each.
    const Tensor& qkv = m.tensors.at(L + "self_attention.linear_qkv.weight").view();
    ASSERT_EQ(qkv.shape(), (Shape{(kNH + 2 * kG) * kHS, kC}));
    const int64_t heads_per_group = kNH / kG, per_group = (heads_per_group + 2) * kHS;
    for (int64_t g = 0; g < kG; ++g)
      for (int64_t w = 0; w < per_group; ++w) {
        const int64_t part = std::min<int64_t>(w / kHS, heads_per_group + 1) - heads_per_group;
        const float* src;
        if (w < heads_per_group * kHS)  // query head g*NH/G + w/HS, row w%HS
          src = data(hf, H + "self_attn.q_proj.weight") + (g * heads_per_group * kHS + w) * kC;
        else
          src = data(hf, H + (part == 0 ? "self_attn.k_proj.weight" : "self_attn.v_proj.weight")) +
                (g * kHS + w % kHS) * kC;
        for (int64_t k = 0; k < kC; ++k)
          ASSERT_EQ(qkv.data<float>()[(g * per_group + w) * kC + k], src[k])
              << "layer " << i << " group " << g << " row " << w << " col " << k;
      }
    // SwiGLU fc1 = [gate ; up]: the model computes silu(first half) * second half.
    const Tensor& fc1 = m.tensors.at(L + "mlp.linear_fc1.weight").view();
    ASSERT_EQ(fc1.shape(), (Shape{2 * kF, kC}));
    EXPECT_EQ(std::memcmp(fc1.data<float>(), data(hf, H + "mlp.gate_proj.weight"), kF * kC * 4), 0);
    EXPECT_EQ(std::memcmp(fc1.data<float>() + kF * kC, data(hf, H + "mlp.up_proj.weight"),
                          kF * kC * 4), 0);
    // Linear weights are [out, in] on both sides: copied as they are.
    const Tensor& proj = m.tensors.at(L + "self_attention.linear_proj.weight").view();
    ASSERT_EQ(proj.shape(), (Shape{kC, kNH * kHS}));
    EXPECT_EQ(std::memcmp(proj.raw(), data(hf, H + "self_attn.o_proj.weight"), proj.nbytes()), 0);
    EXPECT_EQ(std::memcmp(m.tensors.at(L + "mlp.linear_fc2.weight").view().raw(),
                          data(hf, H + "mlp.down_proj.weight"), kC * kF * 4), 0);
    auto value = [&](const std::string& name, int64_t j) {
      return m.tensors.at(name).view().data<float>()[j];
    };
    EXPECT_EQ(value(L + "self_attention.linear_qkv.layer_norm_weight", 3),
              data(hf, H + "input_layernorm.weight")[3]);
    EXPECT_EQ(value(L + "mlp.linear_fc1.layer_norm_weight", 3),
              data(hf, H + "post_attention_layernorm.weight")[3]);
    EXPECT_EQ(m.tensors.count(L + "self_attention.linear_qkv.layer_norm_bias"), 0u);  // RMSNorm
  }
  EXPECT_EQ(m.tensors.at("decoder.final_layernorm.weight").view().data<float>()[5],
            data(hf, "model.norm.weight")[5]);
  // Untied: embedding and output layer, each padded with zero rows to 64.
  using Names = std::pair<std::string, std::string>;
  for (const auto& [ours, theirs] :
       {Names{"embedding.word_embeddings.weight", "model.embed_tokens.weight"},
        Names{"output_layer.weight", "lm_head.weight"}}) {
    const Tensor& t = m.tensors.at(ours).view();
    ASSERT_EQ(t.shape(), (Shape{64, kC})) << ours;
    EXPECT_EQ(std::memcmp(t.raw(), data(hf, theirs), kV * kC * 4), 0) << ours;
    for (int64_t j = kV * kC; j < 64 * kC; ++j) ASSERT_EQ(t.data<float>()[j], 0.0f) << ours;
  }
  EXPECT_EQ(m.tensors.size(), 3 + 6 * static_cast<size_t>(kL));
}

TEST(HfLlama, RoundTripThroughAShardLMCheckpointIsIdentical) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  write_model_checkpoint(read_hf_llama((dir.path() / "hf").string(), 128),
                         (dir.path() / "ckpt").string(), "test");
  CheckpointReader((dir.path() / "ckpt").string(), 0).verify_files();
  const HfModel back = read_model_checkpoint((dir.path() / "ckpt").string());
  EXPECT_EQ(back.config.rotary_base, 500000.0);
  write_hf_llama(back, (dir.path() / "hf2").string());
  expect_same_safetensors(dir.path() / "hf" / "model.safetensors",
                          dir.path() / "hf2" / "model.safetensors");
  EXPECT_EQ(detail::read_json_file(dir.path() / "hf2" / "config.json"), synthetic_config());
}

// The transformers fixtures, a test each, skipped (alone) while its files are missing:
// llama_tiny (default RoPE, untied) and llama3_tiny (Llama 3.x RoPE scaling, tied embeddings).
class HfLlamaFixture : public ::testing::TestWithParam<const char*> {
 protected:
  fs::path fixture() const { return hf_fixture(GetParam()); }
  void SetUp() override {
    if (!fs::exists(fixture() / "model.safetensors") ||
        !fs::exists(fixture() / "logits.safetensors"))
      GTEST_SKIP() << "fixture " << fixture()
                   << " missing: run tools/fixtures/make_hf_fixtures.py --out tests/golden/hf on "
                      "a machine with transformers";
  }
};
INSTANTIATE_TEST_SUITE_P(Transformers, HfLlamaFixture,
                         ::testing::Values("llama_tiny", "llama3_tiny"),
                         [](const auto& info) { return std::string(info.param); });

// What transformers wrote (rope_parameters, transformers 5) comes back byte for byte.
TEST_P(HfLlamaFixture, RoundTripReproducesItsFiles) {
  const fs::path fixture = this->fixture();
  TempDir dir;
  const HfModel m = read_hf_llama(fixture.string());
  EXPECT_EQ(m.config.kv_channels, 0);  // head_dim 16 == hidden / heads
  EXPECT_EQ(m.config.query_groups(), 2);
  write_model_checkpoint(m, (dir.path() / "ckpt").string(), "test");
  write_hf_llama(read_model_checkpoint((dir.path() / "ckpt").string()),
                 (dir.path() / "hf").string());
  expect_same_safetensors(fixture / "model.safetensors",
                          dir.path() / "hf" / "model.safetensors");
  EXPECT_EQ(detail::read_json_file(dir.path() / "hf" / "config.json"),
            detail::read_json_file(fixture / "config.json"));
}

// ShardLM's RoPE frequencies for the llama3 fixture's config equal transformers' inv_freq (its
// fp32 computation, so within fp32 rounding), band by band.
TEST(HfLlama, Llama3FixtureFrequenciesMatchTransformers) {
  const fs::path fixture = hf_fixture("llama3_tiny");
  if (!fs::exists(fixture / "logits.safetensors"))
    GTEST_SKIP() << "fixture " << fixture << " missing";
  const HfModel m = read_hf_llama(fixture.string());
  ASSERT_TRUE(m.config.use_rope_scaling);
  EXPECT_FALSE(m.config.untie_embeddings_and_output_weights);
  SafetensorsReader ref((fixture / "logits.safetensors").string());
  const SafetensorsEntry& e = ref.entry("inv_freq");
  const int64_t half = m.config.rotary_dim() / 2;
  ASSERT_EQ(e.shape, (std::vector<int64_t>{half}));
  const float* hf = reinterpret_cast<const float*>(e.bytes.data());
  for (int64_t i = 0; i < half; ++i) {
    const double ours = ops::rope_inv_freq(m.config.rope_frequencies(), i, 2 * half);
    EXPECT_NEAR(ours / hf[i], 1.0, 1e-6) << "pair " << i;
  }
}

// A Llama trained here (tied, partial RoPE, no source config.json) exports and reads back.
TEST(HfLlama, ExportWithoutASourceConfigReadsBackAsTheSameModel) {
  TempDir dir;
  HfModel m;
  model::TransformerConfig& c = m.config;
  c.num_layers = 1;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_query_groups = 1;
  c.ffn_hidden_size = 24;
  c.seq_length = 8;
  c.vocab_size = 30;
  c.make_vocab_size_divisible_by = 16;
  c.add_bias_linear = false;
  c.swiglu = true;
  c.normalization = model::Normalization::kRMSNorm;
  c.position_embedding = model::PositionEmbedding::kRope;
  c.rotary_base = 1e6;
  c.rotary_percent = 0.5;
  c.norm_epsilon = 1e-6;
  std::mt19937 g(3);
  std::normal_distribution<float> n;
  for (const auto& [name, shape] : model_parameter_shapes(c)) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, shape);
    for (int64_t j = 0; j < t.view().numel(); ++j) t.view().data<float>()[j] = n(g);
    m.tensors[name] = std::move(t);
  }
  // Padded vocabulary rows are dropped on export and come back as zeros.
  const Tensor& emb = m.tensors.at("embedding.word_embeddings.weight").view();
  std::fill(emb.data<float>() + 30 * 16, emb.data<float>() + emb.numel(), 0.0f);
  write_hf_llama(m, (dir.path() / "hf").string());
  const nlohmann::json j = detail::read_json_file(dir.path() / "hf" / "config.json");
  EXPECT_EQ(j.at("tie_word_embeddings"), true);
  EXPECT_EQ(j.at("partial_rotary_factor"), 0.5);
  EXPECT_EQ(j.at("rope_theta"), 1e6);
  EXPECT_FALSE(SafetensorsReader((dir.path() / "hf" / "model.safetensors").string())
                   .contains("lm_head.weight"));
  const HfModel back = read_hf_llama((dir.path() / "hf").string(), 16);
  const nlohmann::json a = model_config_to_json(c), b = model_config_to_json(back.config);
  for (const char* key : {"num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                          "kv_channels", "ffn_hidden_size", "vocab_size", "padded_vocab_size",
                          "untie_embeddings_and_output_weights", "add_bias_linear", "swiglu",
                          "normalization", "norm_epsilon", "position_embedding_type",
                          "rotary_base", "rotary_percent", "rotary_interleaved"})
    EXPECT_EQ(a.at(key), b.at(key)) << key;
  expect_same_model_tensors(m, back);
}

TEST(HfLlama, ReadsAShardedCheckpointThroughItsIndex) {
  TempDir dir;
  write_synthetic(dir.path() / "one");
  write_synthetic(dir.path() / "three", 3);
  ASSERT_TRUE(fs::exists(dir.path() / "three" / "model.safetensors.index.json"));
  ASSERT_FALSE(fs::exists(dir.path() / "three" / "model.safetensors"));
  expect_same_model_tensors(read_hf_llama((dir.path() / "one").string()),
                            read_hf_llama((dir.path() / "three").string()));
}

// The error's kind and a piece of its message.
void expect_refused(const std::function<void()>& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected an error naming " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(HfLlama, UnsupportedConfigsAreRefusedNamingTheKey) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}}}, "rope_scaling"},
      {{{"rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 10000.0}}}}, "rope_type"},
      {{{"attention_bias", true}}, "attention_bias"},
      {{{"mlp_bias", true}}, "mlp_bias"},
      {{{"hidden_act", "gelu"}}, "hidden_act"},
      {{{"model_type", "mistral"}}, "model_type"},
  };
  for (const auto& [patch, key] : cases) {
    TempDir dir;
    write_synthetic(dir.path() / "hf", 1, patch);
    SCOPED_TRACE(patch.dump());
    expect_refused([&] { read_hf_llama((dir.path() / "hf").string()); }, ErrorKind::kUnsupported,
                   key);
  }
}

// Llama 3.x's long-context RoPE and linear interpolation, as transformers 4.x (rope_scaling) and
// 5 (rope_parameters) write them: read into the flags' fields, kept through a ShardLM
// checkpoint, and written back as the source said them.
TEST(HfLlama, RopeScalingConvertsInBothConfigForms) {
  const nlohmann::json llama31 = {{"rope_type", "llama3"}, {"factor", 8.0},
                                  {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                  {"original_max_position_embeddings", 8192}};
  nlohmann::json v5 = llama31;
  v5["rope_theta"] = 500000.0;
  const nlohmann::json cases[] = {
      {{"rope_scaling", llama31}},                                     // transformers 4.x
      {{"rope_scaling", nullptr}, {"rope_theta", nullptr}, {"rope_parameters", v5}},  // 5
  };
  for (const nlohmann::json& patch : cases) {
    SCOPED_TRACE(patch.dump());
    TempDir dir;
    write_synthetic(dir.path() / "hf", 1, patch);
    const HfModel m = read_hf_llama((dir.path() / "hf").string(), 128);
    EXPECT_TRUE(m.config.use_rope_scaling);
    EXPECT_EQ(m.config.rope_scaling_factor, 8.0);
    EXPECT_EQ(m.config.rope_scaling_low_freq_factor, 1.0);
    EXPECT_EQ(m.config.rope_scaling_high_freq_factor, 4.0);
    EXPECT_EQ(m.config.rope_scaling_original_max_positions, 8192.0);
    EXPECT_EQ(m.config.rotary_base, 500000.0);
    EXPECT_EQ(m.config.rotary_seq_len_interpolation_factor, 1.0);
    write_model_checkpoint(m, (dir.path() / "ckpt").string(), "test");
    const HfModel back = read_model_checkpoint((dir.path() / "ckpt").string());
    EXPECT_TRUE(back.config.use_rope_scaling);
    EXPECT_EQ(back.config.rope_scaling_factor, 8.0);
    write_hf_llama(back, (dir.path() / "hf2").string());
    nlohmann::json want = synthetic_config();
    want.merge_patch(patch);
    EXPECT_EQ(detail::read_json_file(dir.path() / "hf2" / "config.json"), want);
  }
  // Linear interpolation (the legacy "type" key), both forms.
  for (const nlohmann::json& patch :
       {nlohmann::json{{"rope_scaling", {{"type", "linear"}, {"factor", 2.5}}}},
        nlohmann::json{{"rope_scaling", nullptr},
                       {"rope_parameters", {{"rope_type", "linear"}, {"factor", 2.5},
                                            {"rope_theta", 10000.0}}}}}) {
    SCOPED_TRACE(patch.dump());
    TempDir dir;
    write_synthetic(dir.path() / "hf", 1, patch);
    const HfModel m = read_hf_llama((dir.path() / "hf").string(), 128);
    EXPECT_FALSE(m.config.use_rope_scaling);
    // transformers 5 form: no legacy top-level copy survives the export to shadow it.
    if (patch.contains("rope_parameters")) {
      write_hf_llama(m, (dir.path() / "hf5").string());
      const nlohmann::json out = detail::read_json_file(dir.path() / "hf5" / "config.json");
      EXPECT_FALSE(out.contains("rope_scaling")) << out.dump();
      EXPECT_FALSE(out.contains("rope_theta")) << out.dump();
    }
    EXPECT_EQ(m.config.rotary_seq_len_interpolation_factor, 2.5);
    write_hf_llama(m, (dir.path() / "hf2").string());
    const nlohmann::json out = detail::read_json_file(dir.path() / "hf2" / "config.json");
    const nlohmann::json& scaling =
        out.contains("rope_parameters") ? out["rope_parameters"] : out["rope_scaling"];
    EXPECT_EQ(scaling["rope_type"], "linear") << out.dump();
    EXPECT_EQ(scaling["factor"], 2.5) << out.dump();
    EXPECT_EQ(read_hf_llama((dir.path() / "hf2").string(), 128)
                  .config.rotary_seq_len_interpolation_factor,
              2.5);
  }
}

TEST(HfLlama, IncompleteRopeScalingIsRefusedNamingTheKey) {
  TempDir dir;
  write_synthetic(dir.path() / "hf", 1,
                  {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}});
  expect_refused([&] { read_hf_llama((dir.path() / "hf").string()); }, ErrorKind::kCorruptData,
                 "low_freq_factor");
  write_synthetic(dir.path() / "hf2", 1,
                  {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0},
                                     {"low_freq_factor", 4.0}, {"high_freq_factor", 1.0},
                                     {"original_max_position_embeddings", 8192}}}});
  expect_refused([&] { read_hf_llama((dir.path() / "hf2").string()); },
                 ErrorKind::kInvalidConfig, "--rope-scaling-high-freq-factor");
  // Without original_max_position_embeddings, as transformers: the top-level key, else the
  // model's context (32 here).
  write_synthetic(dir.path() / "fallback", 1,
                  {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0},
                                     {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}}}});
  EXPECT_EQ(read_hf_llama((dir.path() / "fallback").string())
                .config.rope_scaling_original_max_positions,
            32.0);
  write_synthetic(dir.path() / "hf3", 1, {{"rope_scaling", "llama3"}});
  expect_refused([&] { read_hf_llama((dir.path() / "hf3").string()); }, ErrorKind::kCorruptData,
                 "rope_scaling");
}

TEST(HfLlama, TensorsThatDoNotFitAreRefused) {
  TempDir dir;
  // A bias the config does not announce, and a third layer the config does not have.
  HfTensorMap extra = synthetic_hf();
  extra["model.layers.0.self_attn.q_proj.bias"] = {{kNH * kHS}, std::vector<float>(kNH * kHS)};
  write_hf_tensors(dir.path() / "bias", extra);
  std::ofstream(dir.path() / "bias" / "config.json") << synthetic_config().dump();
  expect_refused([&] { read_hf_llama((dir.path() / "bias").string()); }, ErrorKind::kUnsupported,
                 "model.layers.0.self_attn.q_proj.bias");
  write_synthetic(dir.path() / "deeper", 1, {{"num_hidden_layers", 3}});
  expect_refused([&] { read_hf_llama((dir.path() / "deeper").string()); },
                 ErrorKind::kCorruptData, "model.layers.2.");
  // tie_word_embeddings true while lm_head differs from embed_tokens.
  write_synthetic(dir.path() / "tied", 1, {{"tie_word_embeddings", true}});
  expect_refused([&] { read_hf_llama((dir.path() / "tied").string()); }, ErrorKind::kCorruptData,
                 "tie_word_embeddings");
}

TEST(HfLlama, ExportRefusesWhatLlamaCannotExpress) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  HfModel m = read_hf_llama((dir.path() / "hf").string());
  m.config.rotary_interleaved = true;
  expect_refused([&] { write_hf_llama(m, (dir.path() / "out").string()); },
                 ErrorKind::kUnsupported, "--rotary-interleaved");
  m.config.rotary_interleaved = false;
  m.config.use_rope_scaling = true;
  m.config.rotary_seq_len_interpolation_factor = 2.0;
  expect_refused([&] { write_hf_llama(m, (dir.path() / "out").string()); },
                 ErrorKind::kUnsupported, "one rope_type");
  m.config.use_rope_scaling = false;
  m.config.normalization = model::Normalization::kLayerNorm;
  expect_refused([&] { write_hf_llama(m, (dir.path() / "out").string()); },
                 ErrorKind::kUnsupported, "not a Llama architecture");
  EXPECT_FALSE(fs::exists(dir.path() / "out" / "model.safetensors"));
}

// Logits of the imported fixtures (RoPE rotate-half, GQA, SwiGLU, RMSNorm; untied, and tied with
// Llama 3.x RoPE scaling) against transformers' fp32 logits: fp32 and fp64 forwards within 1e-5
// relative.
TEST_P(HfLlamaFixture, LogitsMatchTransformers) {
  const fs::path fixture = this->fixture();
  const char* name = GetParam();
  const HfModel m = read_hf_llama(fixture.string(), 128);
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const double rel = logits_error_vs_fixture(m, fixture, dtype);
    std::printf("%s logits vs transformers (%s forward): relative error %.3e\n", name,
                dtype == DType::kF32 ? "fp32" : "fp64", rel);
    EXPECT_LT(rel, 1e-5) << "relative error of the logits vs transformers";
  }
  // The same weights with interleaved RoPE are a different model: the check can fail.
  HfModel wrong = read_hf_llama(fixture.string(), 128);
  wrong.config.rotary_interleaved = true;
  EXPECT_GT(logits_error_vs_fixture(wrong, fixture, DType::kF64), 1e-3);
  if (m.config.use_rope_scaling) {  // ... and so is the model without its RoPE scaling
    HfModel unscaled = read_hf_llama(fixture.string(), 128);
    unscaled.config.use_rope_scaling = false;
    EXPECT_GT(logits_error_vs_fixture(unscaled, fixture, DType::kF64), 1e-4);
  }
}

}  // namespace
}  // namespace shardlm::ckpt
