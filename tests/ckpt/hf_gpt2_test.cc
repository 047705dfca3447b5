// Hugging Face GPT-2 import/export: a synthetic HF checkpoint (written here with HF's names and
// Conv1D layouts) maps element by element as the format defines; HF -> ShardLM checkpoint -> HF
// gives identical tensors; and, with the transformers fixture (tests/golden/hf/gpt2_tiny, made
// by tools/fixtures/make_hf_fixtures.py), the imported model's logits equal transformers'.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "ckpt_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/hf_gpt2.h"
#include "shardlm/ckpt/safetensors.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/tensor/arena.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {
namespace {

using testing::TempDir;

constexpr int64_t kC = 16, kNH = 4, kL = 2, kV = 50, kP = 12, kF = 64;

// name -> (shape, values) of a synthetic HF GPT-2 (random, distinct values).
std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> synthetic_hf() {
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"transformer.wte.weight", {kV, kC}}, {"transformer.wpe.weight", {kP, kC}},
      {"transformer.ln_f.weight", {kC}},    {"transformer.ln_f.bias", {kC}}};
  for (int i = 0; i < kL; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    shapes[h + "ln_1.weight"] = {kC};
    shapes[h + "ln_1.bias"] = {kC};
    shapes[h + "attn.c_attn.weight"] = {kC, 3 * kC};
    shapes[h + "attn.c_attn.bias"] = {3 * kC};
    shapes[h + "attn.c_proj.weight"] = {kC, kC};
    shapes[h + "attn.c_proj.bias"] = {kC};
    shapes[h + "ln_2.weight"] = {kC};
    shapes[h + "ln_2.bias"] = {kC};
    shapes[h + "mlp.c_fc.weight"] = {kC, kF};
    shapes[h + "mlp.c_fc.bias"] = {kF};
    shapes[h + "mlp.c_proj.weight"] = {kF, kC};
    shapes[h + "mlp.c_proj.bias"] = {kC};
  }
  std::mt19937 g(5);
  std::normal_distribution<float> n(0.0f, 0.5f);
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> out;
  for (const auto& [name, shape] : shapes) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> v(static_cast<size_t>(numel));
    for (float& x : v) x = n(g);
    out[name] = {shape, v};
  }
  return out;
}

void write_synthetic(const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50,
             "n_positions": 12, "n_embd": 16, "n_layer": 2, "n_head": 4, "n_inner": null,
             "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05})";
  static auto tensors = synthetic_hf();
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors)
    w.add(name, DType::kF32, t.first,
          {reinterpret_cast<const std::byte*>(t.second.data()), t.second.size() * 4});
  w.write((dir / "model.safetensors").string());
}

TEST(HfGpt2, ImportMapsNamesTransposesAndRegroupsQkv) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const auto hf = synthetic_hf();
  const HfModel m = read_hf_gpt2((dir.path() / "hf").string(), 64);
  EXPECT_EQ(m.config.num_layers, kL);
  EXPECT_EQ(m.config.hidden_size, kC);
  EXPECT_EQ(m.config.vocab_size, kV);
  EXPECT_EQ(m.config.padded_vocab_size(), 64);
  EXPECT_EQ(m.config.max_positions(), kP);
  const int64_t HS = kC / kNH;
  // Fused QKV, layer 1: Megatron row (head h, part p in q/k/v, i) = HF column p*C + h*HS + i.
  const auto& [wshape, w] = hf.at("transformer.h.1.attn.c_attn.weight");
  const auto& b = hf.at("transformer.h.1.attn.c_attn.bias").second;
  const Tensor& qkv = m.tensors.at("decoder.layers.1.self_attention.linear_qkv.weight").view();
  const Tensor& qkv_b = m.tensors.at("decoder.layers.1.self_attention.linear_qkv.bias").view();
  ASSERT_EQ(qkv.shape(), (Shape{3 * kC, kC}));
  for (int64_t h = 0; h < kNH; ++h)
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t i = 0; i < HS; ++i) {
        const int64_t row = h * 3 * HS + p * HS + i, col = p * kC + h * HS + i;
        for (int64_t k = 0; k < kC; ++k)
          ASSERT_EQ(qkv.data<float>()[row * kC + k], w[k * 3 * kC + col]) << row << " " << k;
        ASSERT_EQ(qkv_b.data<float>()[row], b[col]);
      }
  // Conv1D [in, out] -> Linear [out, in].
  const auto& fc = hf.at("transformer.h.0.mlp.c_fc.weight").second;
  const Tensor& fc1 = m.tensors.at("decoder.layers.0.mlp.linear_fc1.weight").view();
  ASSERT_EQ(fc1.shape(), (Shape{kF, kC}));
  EXPECT_EQ(fc1.data<float>()[7 * kC + 3], fc[3 * kF + 7]);
  // Padded vocabulary rows are zero; real rows copied.
  const Tensor& wte = m.tensors.at("embedding.word_embeddings.weight").view();
  EXPECT_EQ(wte.data<float>()[(kV - 1) * kC + 2], hf.at("transformer.wte.weight").second[(kV - 1) * kC + 2]);
  EXPECT_EQ(wte.data<float>()[kV * kC + 2], 0.0f);
}

TEST(HfGpt2, RoundTripThroughAShardLMCheckpointIsIdentical) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const HfModel m = read_hf_gpt2((dir.path() / "hf").string(), 128);
  write_model_checkpoint(m, (dir.path() / "ckpt").string(), "test");
  CheckpointReader((dir.path() / "ckpt").string(), 0).verify_files();
  const HfModel back = read_model_checkpoint((dir.path() / "ckpt").string());
  EXPECT_EQ(back.config.hidden_size, kC);
  write_hf_gpt2(back, (dir.path() / "hf2").string());
  SafetensorsReader a((dir.path() / "hf" / "model.safetensors").string());
  SafetensorsReader b((dir.path() / "hf2" / "model.safetensors").string());
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (const auto& [name, e] : a.entries()) {
    ASSERT_TRUE(b.contains(name)) << name;
    const SafetensorsEntry& f = b.entry(name);
    EXPECT_EQ(e.shape, f.shape) << name;
    EXPECT_EQ(e.dtype, f.dtype) << name;
    ASSERT_EQ(e.bytes.size(), f.bytes.size()) << name;
    EXPECT_EQ(std::memcmp(e.bytes.data(), f.bytes.data(), e.bytes.size()), 0) << name;
  }
  // And the exported config reads back as the same architecture.
  const HfModel again = read_hf_gpt2((dir.path() / "hf2").string(), 128);
  EXPECT_EQ(again.config.ffn_size(), kF);
  EXPECT_EQ(again.config.num_attention_heads, kNH);
}

TEST(HfGpt2, ReadsAShardedCheckpointThroughItsIndex) {
  TempDir dir;
  write_synthetic(dir.path() / "one");
  // The same tensors split over two files with a model.safetensors.index.json.
  const fs::path two = dir.path() / "two";
  fs::create_directories(two);
  fs::copy_file(dir.path() / "one" / "config.json", two / "config.json");
  static const auto tensors = synthetic_hf();
  SafetensorsWriter a, b;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int k = 0;
  for (const auto& [name, t] : tensors) {
    const bool first = k++ % 2 == 0;
    (first ? a : b).add(name, DType::kF32, t.first,
                        {reinterpret_cast<const std::byte*>(t.second.data()), t.second.size() * 4});
    index["weight_map"][name] = first ? "model-00001-of-00002.safetensors"
                                      : "model-00002-of-00002.safetensors";
  }
  a.write((two / "model-00001-of-00002.safetensors").string());
  b.write((two / "model-00002-of-00002.safetensors").string());
  std::ofstream(two / "model.safetensors.index.json") << index.dump();
  const HfModel m1 = read_hf_gpt2((dir.path() / "one").string());
  const HfModel m2 = read_hf_gpt2(two.string());
  ASSERT_EQ(m1.tensors.size(), m2.tensors.size());
  for (const auto& [name, t] : m1.tensors) {
    const Tensor& u = m2.tensors.at(name).view();
    ASSERT_EQ(t.view().shape(), u.shape()) << name;
    EXPECT_EQ(std::memcmp(t.view().raw(), u.raw(), u.nbytes()), 0) << name;
  }
}

TEST(HfGpt2, UnsupportedConfigsAreRefused) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  std::ofstream(dir.path() / "hf" / "config.json")
      << R"({"model_type": "gpt2", "vocab_size": 50, "n_positions": 12, "n_embd": 16,
             "n_layer": 2, "n_head": 4, "activation_function": "relu"})";
  try {
    read_hf_gpt2((dir.path() / "hf").string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("relu"), std::string::npos) << e.what();
  }
  std::ofstream(dir.path() / "hf" / "config.json")
      << R"({"model_type": "gpt2", "vocab_size": 50, "n_positions": 12, "n_embd": 16,
             "n_layer": 3, "n_head": 4})";
  try {
    read_hf_gpt2((dir.path() / "hf").string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.2."), std::string::npos) << e.what();
  }
}

// Logits of the imported fixture model against transformers' (fp32, 1e-5 relative).
TEST(HfGpt2, LogitsMatchTransformers) {
  const fs::path fixture = fs::path(SHARDLM_SOURCE_DIR) / "tests/golden/hf/gpt2_tiny";
  if (!fs::exists(fixture / "logits.safetensors"))
    GTEST_SKIP() << "fixture " << fixture
                 << " missing: run tools/fixtures/make_hf_fixtures.py --out tests/golden/hf on a "
                    "machine with transformers";
  HfModel m = read_hf_gpt2(fixture.string(), 128);
  nlohmann::json ids_json;
  std::ifstream(fixture / "input_ids.json") >> ids_json;
  const auto ids = ids_json.at("input_ids").get<std::vector<std::vector<int32_t>>>();
  const int64_t B = static_cast<int64_t>(ids.size()), T = static_cast<int64_t>(ids[0].size());
  model::TransformerConfig cfg = m.config;
  cfg.seq_length = T;
  DeviceContext ctx = DeviceContext::cpu();
  model::GPTModel gpt(cfg);
  model::ParameterRegistry reg;
  gpt.register_parameters(reg);
  reg.finalize(ctx, DType::kF32, 1);
  gpt.bind(reg);
  for (model::Parameter& p : reg.parameters()) {
    const Tensor& src = m.tensors.at(p.spec.name).view();
    ASSERT_EQ(src.shape(), p.value.shape()) << p.spec.name;
    std::memcpy(p.value.raw(), src.raw(), src.nbytes());
  }
  Arena acts(Device::cpu(), gpt.plan_activation_bytes(DType::kF32, B), "activations");
  gpt.allocate_activations(acts, DType::kF32, B);
  OwnedTensor tokens = OwnedTensor::empty(DType::kI32, {B, T});
  OwnedTensor targets = OwnedTensor::zeros(DType::kI32, {B, T});
  OwnedTensor mask = OwnedTensor::empty(DType::kF32, {B, T});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      tokens.view().data<int32_t>()[b * T + t] = ids[b][t];
      mask.view().data<float>()[b * T + t] = 1.0f;
    }
  model::StepContext step{ctx, 1, 0, 0, false};
  gpt.forward(step, {tokens.view(), targets.view(), mask.view(), static_cast<double>(B * T)});
  SafetensorsReader ref((fixture / "logits.safetensors").string());
  const SafetensorsEntry& e = ref.entry("logits");
  const int64_t V = m.config.vocab_size, Vp = cfg.padded_vocab_size();
  ASSERT_EQ(e.shape, (std::vector<int64_t>{B, T, V}));
  const float* hf = reinterpret_cast<const float*>(e.bytes.data());
  const float* ours = gpt.logits().data<float>();
  double diff = 0, norm = 0;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t v = 0; v < V; ++v) {
      const double d = static_cast<double>(ours[n * Vp + v]) - hf[n * V + v];
      diff += d * d;
      norm += static_cast<double>(hf[n * V + v]) * hf[n * V + v];
    }
  const double rel = std::sqrt(diff / norm);
  std::printf("logits vs transformers: relative error %.3e over %lld x %lld\n", rel,
              static_cast<long long>(B * T), static_cast<long long>(V));
  EXPECT_LT(rel, 1e-5) << "relative error of the logits vs transformers";
  EXPECT_GT(norm, 0.0);
}

}  // namespace
}  // namespace shardlm::ckpt
