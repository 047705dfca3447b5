// The checkpoint's model config: every field that changes the math survives JSON, a flag that
// differs is named (RoPE fields included), old checkpoints without the newer keys still load
// with the defaults they were saved with, and the printed flags reproduce the config.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/ckpt/model_config_json.h"

namespace shardlm::ckpt {
namespace {

model::TransformerConfig llama_like() {
  model::TransformerConfig c;
  c.num_layers = 3;
  c.hidden_size = 48;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.kv_channels = 16;
  c.ffn_hidden_size = 80;
  c.vocab_size = 100;
  c.untie_embeddings_and_output_weights = true;
  c.add_bias_linear = false;
  c.swiglu = true;
  c.normalization = model::Normalization::kRMSNorm;
  c.norm_epsilon = 1e-6;
  c.position_embedding = model::PositionEmbedding::kRope;
  c.rotary_base = 500000.0;
  c.rotary_percent = 0.5;
  c.rotary_interleaved = true;
  return c;
}

TEST(ModelConfigJson, EveryMathFieldSurvivesJson) {
  const model::TransformerConfig c = llama_like();
  const model::TransformerConfig back = model_config_from_json(model_config_to_json(c));
  EXPECT_EQ(back.num_layers, 3);
  EXPECT_EQ(back.query_groups(), 2);
  EXPECT_EQ(back.head_dim(), 16);
  EXPECT_EQ(back.ffn_size(), 80);
  EXPECT_TRUE(back.untie_embeddings_and_output_weights);
  EXPECT_FALSE(back.add_bias_linear);
  EXPECT_TRUE(back.swiglu);
  EXPECT_EQ(back.normalization, model::Normalization::kRMSNorm);
  EXPECT_EQ(back.norm_epsilon, 1e-6);
  EXPECT_EQ(back.position_embedding, model::PositionEmbedding::kRope);
  EXPECT_EQ(back.rotary_base, 500000.0);
  EXPECT_EQ(back.rotary_percent, 0.5);
  EXPECT_TRUE(back.rotary_interleaved);
  EXPECT_NO_THROW(check_model_config(model_config_to_json(c), c, "ckpt"));
  EXPECT_NO_THROW(check_model_config(model_config_to_json(c), back, "ckpt"));
}

// The message names the flag and the key; kInvalidConfig.
void expect_mismatch(const nlohmann::json& saved, const model::TransformerConfig& flags,
                     const std::string& flag, const std::string& key) {
  try {
    check_model_config(saved, flags, "ckpt");
    ADD_FAILURE() << "accepted; expected " << flag;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    const std::string what = e.what();
    EXPECT_NE(what.find(flag + " (" + key + ")"), std::string::npos) << what;
  }
}

TEST(ModelConfigJson, AFlagThatChangesTheMathIsNamed) {
  const nlohmann::json saved = model_config_to_json(llama_like());
  using Change = std::function<void(model::TransformerConfig&)>;
  const std::vector<std::tuple<std::string, std::string, Change>> cases = {
          {"--rotary-base", "rotary_base", [](auto& c) { c.rotary_base = 10000.0; }},
          {"--rotary-percent", "rotary_percent", [](auto& c) { c.rotary_percent = 1.0; }},
          {"--rotary-interleaved", "rotary_interleaved",
           [](auto& c) { c.rotary_interleaved = false; }},
          {"--position-embedding-type", "position_embedding_type",
           [](auto& c) { c.position_embedding = model::PositionEmbedding::kLearnedAbsolute; }},
          {"--norm-epsilon", "norm_epsilon", [](auto& c) { c.norm_epsilon = 1e-5; }},
          {"--normalization", "normalization",
           [](auto& c) { c.normalization = model::Normalization::kLayerNorm; }},
          {"--num-query-groups", "num_query_groups", [](auto& c) { c.num_query_groups = 4; }},
          {"--kv-channels", "kv_channels", [](auto& c) { c.kv_channels = 12; }},
          {"--ffn-hidden-size", "ffn_hidden_size", [](auto& c) { c.ffn_hidden_size = 96; }},
          {"--swiglu", "swiglu", [](auto& c) { c.swiglu = false; }},
          {"--disable-bias-linear", "add_bias_linear", [](auto& c) { c.add_bias_linear = true; }},
          {"--untie-embeddings-and-output-weights", "untie_embeddings_and_output_weights",
           [](auto& c) { c.untie_embeddings_and_output_weights = false; }},
      };
  for (const auto& [flag, key, change] : cases) {
    model::TransformerConfig flags = llama_like();
    change(flags);
    SCOPED_TRACE(flag);
    expect_mismatch(saved, flags, flag, key);
  }
  // The message says how to fix it: the checkpoint's own flags, RoPE included.
  try {
    model::TransformerConfig flags = llama_like();
    flags.rotary_base = 10000.0;
    check_model_config(saved, flags, "ckpt");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--position-embedding-type rope --rotary-base 500000.0 "
                                         "--rotary-percent 0.5 --rotary-interleaved"),
              std::string::npos)
        << e.what();
  }
}

// The model family survives JSON and is compared first: a GPT checkpoint loaded as BERT is named
// as such, as is the binary head; a checkpoint without the key (older) is GPT.
TEST(ModelConfigJson, BertFamilyAndBinaryHeadSurviveJsonAndAreCompared) {
  model::TransformerConfig bert;
  bert.vocab_size = 100;
  bert.family = model::ModelFamily::kBert;
  bert.bert_binary_head = false;
  const model::TransformerConfig back = model_config_from_json(model_config_to_json(bert));
  EXPECT_TRUE(back.bert());
  EXPECT_FALSE(back.bert_binary_head);
  model::TransformerConfig gpt = bert;
  gpt.family = model::ModelFamily::kGPT;
  expect_mismatch(model_config_to_json(bert), gpt, "--model-type", "model_type");
  model::TransformerConfig with_head = bert;
  with_head.bert_binary_head = true;
  expect_mismatch(model_config_to_json(bert), with_head, "--bert-no-binary-head",
                  "bert_binary_head");
  nlohmann::json old = model_config_to_json(gpt);
  old.erase("model_type");
  old.erase("bert_binary_head");
  EXPECT_NO_THROW(check_model_config(old, gpt, "ckpt"));
  expect_mismatch(old, bert, "--model-type", "model_type");
  EXPECT_EQ(model_config_flags(bert).rfind("--model-type bert --bert-no-binary-head ", 0), 0u)
      << model_config_flags(bert);
}

// The MoE routing scale survives JSON, is compared, and the fix names it; a checkpoint without it
// (saved before it existed, or without the flag) loads into a run without it.
TEST(ModelConfigJson, MoeTopkScalingFactorSurvivesJsonAndIsCompared) {
  model::TransformerConfig c = llama_like();
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_router_topk_scaling_factor = 2.5;
  EXPECT_EQ(model_config_from_json(model_config_to_json(c)).moe_router_topk_scaling_factor, 2.5);
  model::TransformerConfig unscaled = c;
  unscaled.moe_router_topk_scaling_factor = 0;
  expect_mismatch(model_config_to_json(c), unscaled, "--moe-router-topk-scaling-factor",
                  "moe_router_topk_scaling_factor");
  EXPECT_NE(model_config_flags(c).find("--moe-router-topk-scaling-factor 2.5"), std::string::npos);
  nlohmann::json old = model_config_to_json(unscaled);
  old.erase("moe_router_topk_scaling_factor");
  EXPECT_NO_THROW(check_model_config(old, unscaled, "ckpt"));
}

// RoPE settings change nothing without RoPE, and a RoPE model has no position table length.
TEST(ModelConfigJson, IrrelevantFieldsAreNotCompared) {
  model::TransformerConfig learned;  // learned_absolute
  model::TransformerConfig flags = learned;
  flags.rotary_base = 1234.0;
  EXPECT_NO_THROW(check_model_config(model_config_to_json(learned), flags, "ckpt"));
  model::TransformerConfig rope = llama_like();
  model::TransformerConfig longer = rope;
  longer.seq_length = 4 * rope.seq_length;  // fine-tuning at another length
  EXPECT_NO_THROW(check_model_config(model_config_to_json(rope), longer, "ckpt"));
}

// A checkpoint saved before the RoPE / epsilon keys existed (the keys it had then).
TEST(ModelConfigJson, OldCheckpointsWithoutTheNewKeysStillLoad) {
  const nlohmann::json old = nlohmann::json::parse(R"({
      "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 4,
      "kv_channels": 16, "ffn_hidden_size": 256, "max_position_embeddings": 64,
      "vocab_size": 1000, "untie_embeddings_and_output_weights": false, "add_bias_linear": true,
      "swiglu": false, "normalization": "LayerNorm", "seq_length": 64,
      "make_vocab_size_divisible_by": 128, "padded_vocab_size": 1024,
      "init_method_std": 0.02, "hidden_dropout": 0.1, "attention_dropout": 0.1})");
  model::TransformerConfig flags;
  flags.vocab_size = 1000;
  EXPECT_NO_THROW(check_model_config(old, flags, "ckpt"));
  EXPECT_EQ(model_config_from_json(old).position_embedding,
            model::PositionEmbedding::kLearnedAbsolute);
  model::TransformerConfig rope = flags;
  rope.position_embedding = model::PositionEmbedding::kRope;
  expect_mismatch(old, rope, "--position-embedding-type", "position_embedding_type");
  model::TransformerConfig eps = flags;
  eps.norm_epsilon = 1e-6;
  expect_mismatch(old, eps, "--norm-epsilon", "norm_epsilon");
}

TEST(ModelConfigJson, FlagsReproduceTheConfig) {
  const std::string flags = model_config_flags(llama_like());
  for (const char* part :
       {"--num-layers 3 ", "--group-query-attention --num-query-groups 2", "--kv-channels 16",
        "--ffn-hidden-size 80", "--position-embedding-type rope --rotary-base 500000.0 "
        "--rotary-percent 0.5 --rotary-interleaved", "--untie-embeddings-and-output-weights",
        "--disable-bias-linear", "--swiglu", "--normalization RMSNorm", "--norm-epsilon 1e-06"})
    EXPECT_NE(flags.find(part), std::string::npos) << part << " in " << flags;
  EXPECT_EQ(flags.find("--max-position-embeddings"), std::string::npos) << flags;
  const std::string plain = model_config_flags(model::TransformerConfig{});
  EXPECT_EQ(plain.find("rotary"), std::string::npos) << plain;
  EXPECT_EQ(plain.find("--norm-epsilon"), std::string::npos) << plain;
}

// Llama 3.x RoPE scaling and linear interpolation: kept in the JSON, compared against the flags
// (a checkpoint made with them does not load silently without them), named in the fix, and not
// compared where they cannot matter (no --use-rope-scaling: its parameters).
model::TransformerConfig llama3_like() {
  model::TransformerConfig c = llama_like();
  c.use_rope_scaling = true;
  c.rope_scaling_factor = 32.0;
  c.rope_scaling_low_freq_factor = 2.0;
  c.rope_scaling_high_freq_factor = 8.0;
  c.rope_scaling_original_max_positions = 4096;
  c.rotary_seq_len_interpolation_factor = 2.0;
  return c;
}

TEST(ModelConfigJson, RopeScalingSurvivesJsonAndIsCompared) {
  const model::TransformerConfig c = llama3_like();
  const nlohmann::json saved = model_config_to_json(c);
  const model::TransformerConfig back = model_config_from_json(saved);
  EXPECT_TRUE(back.use_rope_scaling);
  EXPECT_EQ(back.rope_scaling_factor, 32.0);
  EXPECT_EQ(back.rope_scaling_low_freq_factor, 2.0);
  EXPECT_EQ(back.rope_scaling_high_freq_factor, 8.0);
  EXPECT_EQ(back.rope_scaling_original_max_positions, 4096.0);
  EXPECT_EQ(back.rotary_seq_len_interpolation_factor, 2.0);
  EXPECT_NO_THROW(check_model_config(saved, back, "ckpt"));
  using Change = std::function<void(model::TransformerConfig&)>;
  const std::vector<std::tuple<std::string, std::string, Change>> cases = {
      {"--use-rope-scaling", "use_rope_scaling", [](auto& c) { c.use_rope_scaling = false; }},
      {"--rope-scaling-factor", "rope_scaling_factor",
       [](auto& c) { c.rope_scaling_factor = 8.0; }},
      {"--rope-scaling-low-freq-factor", "rope_scaling_low_freq_factor",
       [](auto& c) { c.rope_scaling_low_freq_factor = 1.0; }},
      {"--rope-scaling-high-freq-factor", "rope_scaling_high_freq_factor",
       [](auto& c) { c.rope_scaling_high_freq_factor = 4.0; }},
      {"--rope-scaling-original-max-position-embeddings",
       "rope_scaling_original_max_position_embeddings",
       [](auto& c) { c.rope_scaling_original_max_positions = 8192; }},
      {"--rotary-seq-len-interpolation-factor", "rotary_seq_len_interpolation_factor",
       [](auto& c) { c.rotary_seq_len_interpolation_factor = 1.0; }},
  };
  for (const auto& [flag, key, change] : cases) {
    model::TransformerConfig flags = c;
    change(flags);
    SCOPED_TRACE(flag);
    expect_mismatch(saved, flags, flag, key);
  }
  const std::string fix = model_config_flags(c);
  for (const char* part : {"--use-rope-scaling --rope-scaling-factor 32.0 "
                           "--rope-scaling-low-freq-factor 2.0 --rope-scaling-high-freq-factor "
                           "8.0 --rope-scaling-original-max-position-embeddings 4096.0",
                           "--rotary-seq-len-interpolation-factor 2.0"})
    EXPECT_NE(fix.find(part), std::string::npos) << part << " in " << fix;
  // Without --use-rope-scaling its parameters are not compared; an old RoPE checkpoint (no
  // scaling keys) loads with the defaults and refuses --use-rope-scaling.
  model::TransformerConfig plain = llama_like(), other = plain;
  other.rope_scaling_factor = 3.0;
  EXPECT_NO_THROW(check_model_config(model_config_to_json(plain), other, "ckpt"));
  nlohmann::json old = model_config_to_json(plain);
  for (const char* k : {"use_rope_scaling", "rope_scaling_factor", "rope_scaling_low_freq_factor",
                        "rope_scaling_high_freq_factor",
                        "rope_scaling_original_max_position_embeddings",
                        "rotary_seq_len_interpolation_factor"})
    old.erase(k);
  EXPECT_NO_THROW(check_model_config(old, plain, "ckpt"));
  model::TransformerConfig scaled = plain;
  scaled.use_rope_scaling = true;
  expect_mismatch(old, scaled, "--use-rope-scaling", "use_rope_scaling");
}

}  // namespace
}  // namespace shardlm::ckpt
