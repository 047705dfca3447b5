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
#include "hf_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/hf_gpt2.h"
#include "shardlm/ckpt/safetensors.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {
namespace {

using namespace testing;  // NOLINT: TempDir and the HF helpers

constexpr int64_t kC = 16, kNH = 4, kL = 2, kV = 50, kP = 12, kF = 64;

// A synthetic HF GPT-2 (random, distinct values).
HfTensorMap synthetic_hf() {
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
  return random_hf_tensors(shapes, 5);
}

constexpr char kConfig[] =
    R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50,
        "n_positions": 12, "n_embd": 16, "n_layer": 2, "n_head": 4, "n_inner": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05})";

void write_synthetic(const fs::path& dir, int shards = 1) {
  write_hf_tensors(dir, synthetic_hf(), shards);
  std::ofstream(dir / "config.json") << kConfig;
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
  expect_same_safetensors(dir.path() / "hf" / "model.safetensors",
                          dir.path() / "hf2" / "model.safetensors");
  // And the exported config reads back as the same architecture.
  const HfModel again = read_hf_gpt2((dir.path() / "hf2").string(), 128);
  EXPECT_EQ(again.config.ffn_size(), kF);
  EXPECT_EQ(again.config.num_attention_heads, kNH);
}

TEST(HfGpt2, ReadsAShardedCheckpointThroughItsIndex) {
  TempDir dir;
  write_synthetic(dir.path() / "one");
  // The same tensors split over two files with a model.safetensors.index.json.
  write_synthetic(dir.path() / "two", 2);
  ASSERT_FALSE(fs::exists(dir.path() / "two" / "model.safetensors"));
  expect_same_model_tensors(read_hf_gpt2((dir.path() / "one").string()),
                            read_hf_gpt2((dir.path() / "two").string()));
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
  const fs::path fixture = testing::hf_fixture("gpt2_tiny");
  if (!fs::exists(fixture / "logits.safetensors"))
    GTEST_SKIP() << "fixture " << fixture
                 << " missing: run tools/fixtures/make_hf_fixtures.py --out tests/golden/hf on a "
                    "machine with transformers";
  const HfModel m = read_hf_gpt2(fixture.string(), 128);
  const double rel = testing::logits_error_vs_fixture(m, fixture, DType::kF32);
  std::printf("logits vs transformers: relative error %.3e\n", rel);
  EXPECT_LT(rel, 1e-5) << "relative error of the logits vs transformers";
}

}  // namespace
}  // namespace shardlm::ckpt
