// Hugging Face Megatron-BERT import/export: a synthetic HF checkpoint (written here with HF's
// MegatronBert names) maps element by element as hf_bert.h defines; HF -> ShardLM checkpoint ->
// HF and ShardLM -> HF -> ShardLM give identical tensors, with and without the binary head;
// what either side cannot express is refused naming the reason; and, with the transformers
// fixture (tests/golden/hf/megatron_bert_tiny, made by tools/fixtures/make_hf_fixtures.py), the
// imported model's prediction and sentence-order logits equal transformers'.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "ckpt_test_util.h"
#include "hf_test_util.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/detail/hf_files.h"
#include "shardlm/ckpt/hf_bert.h"
#include "tests/testing/op_checks.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {
namespace {

using namespace testing;  // NOLINT: TempDir and the HF helpers

constexpr int64_t kC = 16, kNH = 4, kL = 2, kV = 50, kP = 12, kF = 64;

// A synthetic HF Megatron-BERT (random, distinct values): MegatronBertForPreTraining with the
// binary head, else MegatronBertForMaskedLM (zero token types, as the export writes them).
HfTensorMap synthetic_hf(bool binary) {
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"bert.embeddings.word_embeddings.weight", {kV, kC}},
      {"bert.embeddings.position_embeddings.weight", {kP, kC}},
      {"bert.encoder.ln.weight", {kC}},
      {"bert.encoder.ln.bias", {kC}},
      {"cls.predictions.transform.dense.weight", {kC, kC}},
      {"cls.predictions.transform.dense.bias", {kC}},
      {"cls.predictions.transform.LayerNorm.weight", {kC}},
      {"cls.predictions.transform.LayerNorm.bias", {kC}},
      {"cls.predictions.bias", {kV}}};
  if (binary) {
    shapes["bert.embeddings.token_type_embeddings.weight"] = {2, kC};
    shapes["bert.pooler.dense.weight"] = {kC, kC};
    shapes["bert.pooler.dense.bias"] = {kC};
    shapes["cls.seq_relationship.weight"] = {2, kC};
    shapes["cls.seq_relationship.bias"] = {2};
  }
  for (int i = 0; i < kL; ++i) {
    const std::string h = "bert.encoder.layer." + std::to_string(i) + ".";
    for (const char* part : {"query", "key", "value"}) {
      shapes[h + "attention.self." + part + ".weight"] = {kC, kC};
      shapes[h + "attention.self." + part + ".bias"] = {kC};
    }
    shapes[h + "attention.ln.weight"] = {kC};
    shapes[h + "attention.ln.bias"] = {kC};
    shapes[h + "attention.output.dense.weight"] = {kC, kC};
    shapes[h + "attention.output.dense.bias"] = {kC};
    shapes[h + "ln.weight"] = {kC};
    shapes[h + "ln.bias"] = {kC};
    shapes[h + "intermediate.dense.weight"] = {kF, kC};
    shapes[h + "intermediate.dense.bias"] = {kF};
    shapes[h + "output.dense.weight"] = {kC, kF};
    shapes[h + "output.dense.bias"] = {kC};
  }
  HfTensorMap out = random_hf_tensors(shapes, binary ? 7 : 8);
  if (!binary)
    out["bert.embeddings.token_type_embeddings.weight"] = {
        {2, kC}, std::vector<float>(static_cast<size_t>(2 * kC), 0.0f)};
  return out;
}

std::string config_json(const std::string& extra = "", int64_t layers = kL) {
  return R"({"model_type": "megatron-bert", "architectures": ["MegatronBertForPreTraining"],
             "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": )" +
         std::to_string(layers) + R"(, "num_attention_heads": 4,
             "intermediate_size": 64, "hidden_act": "gelu_new", "max_position_embeddings": 12,
             "type_vocab_size": 2, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
             "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
             "initializer_range": 0.02, "tie_word_embeddings": true)" + extra + "}";
}

void write_synthetic(const fs::path& dir, bool binary = true, int shards = 1) {
  write_hf_tensors(dir, synthetic_hf(binary), shards);
  std::ofstream(dir / "config.json") << config_json();
}

const std::vector<float>& hf_values(const HfTensorMap& hf, const std::string& name) {
  return hf.at(name).second;
}

TEST(HfMegatronBert, ImportMapsNamesAndRegroupsQkv) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const auto hf = synthetic_hf(true);
  const HfModel m = read_hf_megatron_bert((dir.path() / "hf").string(), 64);
  EXPECT_TRUE(m.config.bert());
  EXPECT_TRUE(m.config.bert_binary_head);
  EXPECT_EQ(m.config.num_layers, kL);
  EXPECT_EQ(m.config.ffn_size(), kF);
  EXPECT_EQ(m.config.padded_vocab_size(), 64);
  EXPECT_EQ(m.config.max_positions(), kP);
  EXPECT_EQ(m.config.norm_epsilon, 1e-12);
  EXPECT_TRUE(m.notes.empty());
  const int64_t HS = kC / kNH;
  // Layer 1's QKV: Megatron row (head h, part p in q/k/v, i) = HF <part>.weight row h*HS + i.
  const Tensor& qkv = m.tensors.at("decoder.layers.1.self_attention.linear_qkv.weight").view();
  const Tensor& qkv_b = m.tensors.at("decoder.layers.1.self_attention.linear_qkv.bias").view();
  ASSERT_EQ(qkv.shape(), (Shape{3 * kC, kC}));
  const char* parts[] = {"query", "key", "value"};
  for (int64_t h = 0; h < kNH; ++h)
    for (int64_t p = 0; p < 3; ++p) {
      const std::string hf_name = std::string("bert.encoder.layer.1.attention.self.") + parts[p];
      const auto& w = hf_values(hf, hf_name + ".weight");
      const auto& b = hf_values(hf, hf_name + ".bias");
      for (int64_t i = 0; i < HS; ++i) {
        const int64_t row = h * 3 * HS + p * HS + i, hf_row = h * HS + i;
        for (int64_t k = 0; k < kC; ++k)
          ASSERT_EQ(qkv.data<float>()[row * kC + k], w[hf_row * kC + k]) << row << " " << k;
        ASSERT_EQ(qkv_b.data<float>()[row], b[hf_row]) << row;
      }
    }
  // Linear weights are [out, in] on both sides.
  const Tensor& fc1 = m.tensors.at("decoder.layers.0.mlp.linear_fc1.weight").view();
  ASSERT_EQ(fc1.shape(), (Shape{kF, kC}));
  EXPECT_EQ(fc1.data<float>()[7 * kC + 3],
            hf_values(hf, "bert.encoder.layer.0.intermediate.dense.weight")[7 * kC + 3]);
  EXPECT_EQ(m.tensors.at("decoder.layers.0.mlp.linear_fc1.layer_norm_bias").view().data<float>()[5],
            hf_values(hf, "bert.encoder.layer.0.ln.bias")[5]);
  EXPECT_EQ(m.tensors.at("lm_head.layer_norm.weight").view().data<float>()[2],
            hf_values(hf, "cls.predictions.transform.LayerNorm.weight")[2]);
  EXPECT_EQ(m.tensors.at("embedding.tokentype_embeddings.weight").view().data<float>()[kC + 1],
            hf_values(hf, "bert.embeddings.token_type_embeddings.weight")[kC + 1]);
  EXPECT_EQ(m.tensors.at("binary_head.weight").view().data<float>()[kC + 4],
            hf_values(hf, "cls.seq_relationship.weight")[kC + 4]);
  EXPECT_EQ(m.tensors.at("pooler.dense.bias").view().data<float>()[3],
            hf_values(hf, "bert.pooler.dense.bias")[3]);
  // Vocabulary padding: real rows copied, padded rows (and output bias entries) zero.
  const Tensor& wte = m.tensors.at("embedding.word_embeddings.weight").view();
  EXPECT_EQ(wte.data<float>()[(kV - 1) * kC + 2],
            hf_values(hf, "bert.embeddings.word_embeddings.weight")[(kV - 1) * kC + 2]);
  EXPECT_EQ(wte.data<float>()[kV * kC + 2], 0.0f);
  const Tensor& bias = m.tensors.at("output_layer.bias").view();
  ASSERT_EQ(bias.shape(), (Shape{64}));
  EXPECT_EQ(bias.data<float>()[kV - 1], hf_values(hf, "cls.predictions.bias")[kV - 1]);
  EXPECT_EQ(bias.data<float>()[kV], 0.0f);
}

// MegatronBertForMaskedLM: no pooler / seq_relationship -> --bert-no-binary-head; the output
// bias may be saved under the decoder's alias, and a tied decoder weight is checked.
TEST(HfMegatronBert, MaskedLmImportsWithoutTheBinaryHead) {
  TempDir dir;
  HfTensorMap hf = synthetic_hf(false);
  hf["cls.predictions.decoder.bias"] = hf.at("cls.predictions.bias");
  hf.erase("cls.predictions.bias");
  hf["cls.predictions.decoder.weight"] = hf.at("bert.embeddings.word_embeddings.weight");
  write_hf_tensors(dir.path() / "hf", hf);
  std::ofstream(dir.path() / "hf" / "config.json") << config_json();
  const HfModel m = read_hf_megatron_bert((dir.path() / "hf").string());
  EXPECT_TRUE(m.config.bert());
  EXPECT_FALSE(m.config.bert_binary_head);
  EXPECT_EQ(m.tensors.count("embedding.tokentype_embeddings.weight"), 0u);
  EXPECT_EQ(m.tensors.count("pooler.dense.weight"), 0u);
  EXPECT_EQ(m.tensors.at("output_layer.bias").view().data<float>()[3],
            hf_values(hf, "cls.predictions.decoder.bias")[3]);

  // Token types that add something have no place without the binary head.
  hf["bert.embeddings.token_type_embeddings.weight"].second[5] = 0.25f;
  write_hf_tensors(dir.path() / "typed", hf);
  std::ofstream(dir.path() / "typed" / "config.json") << config_json();
  EXPECT_SHARDLM_ERROR(read_hf_megatron_bert((dir.path() / "typed").string()),
                       ErrorKind::kUnsupported, "token types only with the binary head");
  // An untied decoder weight with tie_word_embeddings true is a contradiction.
  hf["bert.embeddings.token_type_embeddings.weight"].second[5] = 0.0f;
  hf["cls.predictions.decoder.weight"].second[0] += 1.0f;
  write_hf_tensors(dir.path() / "untied", hf);
  std::ofstream(dir.path() / "untied" / "config.json") << config_json();
  EXPECT_SHARDLM_ERROR(read_hf_megatron_bert((dir.path() / "untied").string()),
                       ErrorKind::kCorruptData, "tie_word_embeddings false");
}

TEST(HfMegatronBert, HfToShardLMToHfIsIdentical) {
  for (bool binary : {true, false}) {
    TempDir dir;
    write_synthetic(dir.path() / "hf", binary);
    const HfModel m = read_hf_megatron_bert((dir.path() / "hf").string(), 128);
    EXPECT_EQ(m.config.bert_binary_head, binary);
    write_model_checkpoint(m, (dir.path() / "ckpt").string(), "test");
    CheckpointReader((dir.path() / "ckpt").string(), 0).verify_files();
    const HfModel back = read_model_checkpoint((dir.path() / "ckpt").string());
    // The checkpoint records the family: training loads it as --model-type bert.
    EXPECT_TRUE(back.config.bert());
    EXPECT_EQ(back.config.bert_binary_head, binary);
    write_hf_megatron_bert(back, (dir.path() / "hf2").string());
    expect_same_safetensors(dir.path() / "hf" / "model.safetensors",
                            dir.path() / "hf2" / "model.safetensors");
    const nlohmann::json exported = detail::read_json_file(dir.path() / "hf2" / "config.json");
    EXPECT_EQ(exported.at("architectures")[0],
              binary ? "MegatronBertForPreTraining" : "MegatronBertForMaskedLM");
    EXPECT_EQ(exported.at("hidden_act"), "gelu_new");
    const HfModel again = read_hf_megatron_bert((dir.path() / "hf2").string(), 128);
    expect_same_model_tensors(m, again);
    EXPECT_EQ(again.config.norm_epsilon, 1e-12);
  }
}

// A ShardLM BERT (random values; padded vocabulary rows zero, as import makes them) -> HF ->
// ShardLM, tied and untied, with and without the binary head.
TEST(HfMegatronBert, ShardLMToHfToShardLMIsIdentical) {
  for (bool binary : {true, false})
    for (bool untied : {false, true}) {
      TempDir dir;
      HfModel m;
      model::TransformerConfig& c = m.config;
      c.family = model::ModelFamily::kBert;
      c.bert_binary_head = binary;
      c.untie_embeddings_and_output_weights = untied;
      c.num_layers = kL;
      c.hidden_size = kC;
      c.num_attention_heads = kNH;
      c.ffn_hidden_size = kF;
      c.seq_length = kP;
      c.vocab_size = kV;
      c.make_vocab_size_divisible_by = 16;
      c.norm_epsilon = 1e-5;
      std::mt19937 g(3);
      std::normal_distribution<float> n(0.0f, 1.0f);
      for (const auto& [name, shape] : model_parameter_shapes(c)) {
        OwnedTensor t = OwnedTensor::empty(DType::kF32, shape);
        float* p = t.view().data<float>();
        const int64_t row = shape.rank() == 1 ? 1 : shape[1];
        for (int64_t k = 0; k < t.view().numel(); ++k) {
          const bool vocab = name == "embedding.word_embeddings.weight" ||
                             name == "output_layer.weight" || name == "output_layer.bias";
          p[k] = vocab && k / row >= kV ? 0.0f : n(g);
        }
        m.tensors[name] = std::move(t);
      }
      write_hf_megatron_bert(m, (dir.path() / "hf").string());
      const HfModel back = read_hf_megatron_bert((dir.path() / "hf").string(), 16);
      EXPECT_EQ(back.config.bert_binary_head, binary);
      EXPECT_EQ(back.config.untie_embeddings_and_output_weights, untied);
      EXPECT_EQ(back.config.norm_epsilon, 1e-5);
      expect_same_model_tensors(m, back);
    }
}

TEST(HfMegatronBert, ReadsAShardedCheckpointThroughItsIndex) {
  TempDir dir;
  write_synthetic(dir.path() / "one");
  write_synthetic(dir.path() / "two", true, 2);
  ASSERT_FALSE(fs::exists(dir.path() / "two" / "model.safetensors"));
  expect_same_model_tensors(read_hf_megatron_bert((dir.path() / "one").string()),
                            read_hf_megatron_bert((dir.path() / "two").string()));
}

// hidden_act "gelu" (erf: Megatron's and every NVIDIA checkpoint's) imports with a note.
TEST(HfMegatronBert, ErfGeluImportsWithANote) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  std::ofstream(dir.path() / "hf" / "config.json") << config_json(R"(, "hidden_act": "gelu")");
  const HfModel m = read_hf_megatron_bert((dir.path() / "hf").string());
  ASSERT_EQ(m.notes.size(), 1u);
  EXPECT_NE(m.notes[0].find("tanh approximation"), std::string::npos) << m.notes[0];
}

TEST(HfMegatronBert, UnsupportedConfigsAreRefused) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const std::string hf = (dir.path() / "hf").string();
  auto refused = [&](const std::string& config, const std::string& why) {
    std::ofstream(dir.path() / "hf" / "config.json") << config;
    EXPECT_SHARDLM_ERROR(read_hf_megatron_bert(hf), ErrorKind::kUnsupported, why);
  };
  refused(config_json(R"(, "hidden_act": "relu")"), "hidden_act 'relu'");
  refused(config_json(R"(, "position_embedding_type": "relative_key")"), "relative_key");
  refused(config_json(R"(, "is_decoder": true)"), "is_decoder");
  refused(config_json(R"(, "type_vocab_size": 3)"), "type_vocab_size 3");
  refused(config_json("", 1), "'bert.encoder.layer.1.");
  refused(R"({"model_type": "bert", "vocab_size": 50})", "model_type 'bert'");
  // Too many layers: the missing tensor is named.
  std::ofstream(dir.path() / "hf" / "config.json") << config_json("", 3);
  EXPECT_SHARDLM_ERROR(read_hf_megatron_bert(hf), ErrorKind::kCorruptData,
                       "bert.encoder.layer.2.");
}

TEST(HfMegatronBert, ExportRefusesWhatMegatronBertCannotExpress) {
  TempDir dir;
  write_synthetic(dir.path() / "hf");
  const HfModel base = read_hf_megatron_bert((dir.path() / "hf").string());
  const std::string out = (dir.path() / "out").string();
  auto refused = [&](auto change, const std::string& why) {
    HfModel m;
    m.config = base.config;
    change(m.config);
    EXPECT_SHARDLM_ERROR(write_hf_megatron_bert(m, out), ErrorKind::kUnsupported, why);
  };
  using Cfg = model::TransformerConfig;
  refused([](Cfg& c) { c.family = model::ModelFamily::kGPT; }, "holds a GPT model");
  refused([](Cfg& c) { c.normalization = model::Normalization::kRMSNorm; }, "RMSNorm");
  refused([](Cfg& c) { c.swiglu = true; }, "--swiglu");
  refused([](Cfg& c) { c.add_bias_linear = false; }, "--disable-bias-linear");
  refused([](Cfg& c) { c.position_embedding = model::PositionEmbedding::kRope; }, "rope");
  refused([](Cfg& c) { c.num_query_groups = 2; }, "--group-query-attention");
  refused([](Cfg& c) { c.num_experts = 4; }, "MoE");
  EXPECT_FALSE(fs::exists(out));
}

// Logits of the imported fixture model against transformers' (fp32, 1e-5 relative) on the
// real positions (the second sequence is padded after 17 tokens), and the sentence-order logits.
TEST(HfMegatronBert, LogitsMatchTransformers) {
  const fs::path fixture = testing::hf_fixture("megatron_bert_tiny");
  if (!fs::exists(fixture / "logits.safetensors"))
    GTEST_SKIP() << "fixture " << fixture
                 << " missing: run python3 tools/fixtures/make_hf_fixtures.py --out "
                    "tests/golden/hf --only megatron_bert_tiny on a machine with transformers";
  const HfModel m = read_hf_megatron_bert(fixture.string(), 128);
  ASSERT_TRUE(m.config.has_binary_head());
  const BertLogitsErrors e = testing::bert_logits_errors_vs_fixture(m, fixture, DType::kF32);
  std::printf("vs transformers: prediction logits %.3e, seq_relationship logits %.3e\n",
              e.prediction, e.seq_relationship);
  EXPECT_LT(e.prediction, 1e-5) << "relative error of the prediction logits vs transformers";
  EXPECT_LT(e.seq_relationship, 1e-5) << "relative error of the sentence-order logits";
}

}  // namespace
}  // namespace shardlm::ckpt
