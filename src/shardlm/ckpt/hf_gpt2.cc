#include "shardlm/ckpt/hf_gpt2.h"

#include <cstring>
#include <filesystem>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/detail/hf_files.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

using detail::copy_of;
using detail::layer_prefix;
using detail::transpose;

namespace {
std::string hf_layer(int64_t i) { return "h." + std::to_string(i) + "."; }
}  // namespace

HfModel read_hf_gpt2(const std::string& hf_dir, int64_t divisible_by, int64_t tp) {
  const fs::path dir(hf_dir);
  HfModel m;
  m.hf_config = detail::read_json_file(dir / "config.json");
  const nlohmann::json& h = m.hf_config;
  const std::string where = "'" + (dir / "config.json").string() + "'";
  const std::string type = h.value("model_type", std::string());
  SHARDLM_REQUIRE(type == "gpt2", ErrorKind::kUnsupported,
                  where + " has model_type '" + type + "'; --model-type gpt2 reads GPT-2 models");
  const std::string act = h.value("activation_function", std::string("gelu_new"));
  SHARDLM_REQUIRE(act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast",
                  ErrorKind::kUnsupported,
                  where + ": activation_function '" + act +
                      "' is not supported (ShardLM's GELU is the tanh approximation, gelu_new)");
  SHARDLM_REQUIRE(!h.value("scale_attn_by_inverse_layer_idx", false) &&
                      h.value("scale_attn_weights", true),
                  ErrorKind::kUnsupported,
                  where + ": only the standard 1/sqrt(head_dim) attention scaling is supported");
  model::TransformerConfig& c = m.config;
  c.num_layers = h.at("n_layer").get<int64_t>();
  c.hidden_size = h.at("n_embd").get<int64_t>();
  c.num_attention_heads = h.at("n_head").get<int64_t>();
  c.ffn_hidden_size = h.contains("n_inner") && !h["n_inner"].is_null()
                          ? h["n_inner"].get<int64_t>()
                          : 4 * c.hidden_size;
  c.max_position_embeddings = h.at("n_positions").get<int64_t>();
  c.seq_length = c.max_position_embeddings;
  c.vocab_size = h.at("vocab_size").get<int64_t>();
  c.make_vocab_size_divisible_by = divisible_by;
  c.tensor_model_parallel_size = tp;
  c.norm_epsilon = h.value("layer_norm_epsilon", 1e-5);
  c.hidden_dropout = h.value("resid_pdrop", 0.1);
  c.attention_dropout = h.value("attn_pdrop", 0.1);
  c.validate();

  const detail::HfTensors hf(dir, "GPT-2");
  std::string prefix = hf.contains("transformer.wte.weight") ? "transformer." : "";
  const int64_t C = c.hidden_size, V = c.vocab_size, F = c.ffn_size(), P = c.max_positions();
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    return hf.get(prefix + name, shape);
  };
  {  // word embeddings, padded
    OwnedTensor wte = get("wte.weight", {V, C});
    if (hf.contains("lm_head.weight")) {
      OwnedTensor head = hf.get("lm_head.weight", {V, C});
      SHARDLM_REQUIRE(std::memcmp(head.view().raw(), wte.view().raw(), wte.view().nbytes()) == 0,
                      ErrorKind::kUnsupported,
                      "lm_head.weight differs from wte.weight: untied GPT-2 output layers are "
                      "not supported by this converter");
    }
    m.tensors["embedding.word_embeddings.weight"] = detail::resize_rows(wte, c.padded_vocab_size());
  }
  m.tensors["embedding.position_embeddings.weight"] = get("wpe.weight", {P, C});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = hf_layer(i);
    m.tensors[L + "self_attention.linear_qkv.layer_norm_weight"] = get(H + "ln_1.weight", {C});
    m.tensors[L + "self_attention.linear_qkv.layer_norm_bias"] = get(H + "ln_1.bias", {C});
    // Conv1D stores [in, out]: transpose to [out, in], then regroup the out rows.
    m.tensors[L + "self_attention.linear_qkv.weight"] = detail::qkv_rows_from_hf(
        transpose(get(H + "attn.c_attn.weight", {C, c.qkv_size()})), c);
    m.tensors[L + "self_attention.linear_qkv.bias"] =
        detail::qkv_rows_from_hf(get(H + "attn.c_attn.bias", {c.qkv_size()}), c);
    m.tensors[L + "self_attention.linear_proj.weight"] =
        transpose(get(H + "attn.c_proj.weight", {C, C}));
    m.tensors[L + "self_attention.linear_proj.bias"] = get(H + "attn.c_proj.bias", {C});
    m.tensors[L + "mlp.linear_fc1.layer_norm_weight"] = get(H + "ln_2.weight", {C});
    m.tensors[L + "mlp.linear_fc1.layer_norm_bias"] = get(H + "ln_2.bias", {C});
    m.tensors[L + "mlp.linear_fc1.weight"] = transpose(get(H + "mlp.c_fc.weight", {C, F}));
    m.tensors[L + "mlp.linear_fc1.bias"] = get(H + "mlp.c_fc.bias", {F});
    m.tensors[L + "mlp.linear_fc2.weight"] = transpose(get(H + "mlp.c_proj.weight", {F, C}));
    m.tensors[L + "mlp.linear_fc2.bias"] = get(H + "mlp.c_proj.bias", {C});
  }
  m.tensors["decoder.final_layernorm.weight"] = get("ln_f.weight", {C});
  m.tensors["decoder.final_layernorm.bias"] = get("ln_f.bias", {C});
  // Every parameter of the model is there, with its shape.
  for (const auto& [name, shape] : model_parameter_shapes(c)) {
    auto it = m.tensors.find(name);
    SHARDLM_CHECK(it != m.tensors.end());
    SHARDLM_CHECK(it->second.view().shape() == shape);
  }
  return m;
}

void write_hf_gpt2(const HfModel& m, const std::string& out_dir) {
  const model::TransformerConfig& c = m.config;
  SHARDLM_REQUIRE(c.num_experts == 0, ErrorKind::kUnsupported,
                  "the model has MoE layers (--num-experts " + std::to_string(c.num_experts) +
                      "); Hugging Face GPT-2 has dense MLPs only");
  SHARDLM_REQUIRE(!c.untie_embeddings_and_output_weights && c.add_bias_linear && !c.swiglu &&
                      c.normalization == model::Normalization::kLayerNorm &&
                      c.position_embedding == model::PositionEmbedding::kLearnedAbsolute &&
                      c.query_groups() == c.num_attention_heads &&
                      c.head_dim() * c.num_attention_heads == c.hidden_size,
                  ErrorKind::kUnsupported,
                  "this model is not a GPT-2 architecture (tied embeddings, biases, GELU MLP, "
                  "LayerNorm, learned positions, multi-head attention with hidden/heads head "
                  "size); --to hf --model-type gpt2 cannot express it");
  const int64_t C = c.hidden_size, V = c.vocab_size;
  auto at = [&](const std::string& name) -> const Tensor& {
    return detail::parameter(m.tensors, name);
  };
  std::vector<std::pair<std::string, OwnedTensor>> out;
  auto put = [&](const std::string& name, OwnedTensor t) { out.emplace_back(name, std::move(t)); };
  put("transformer.wte.weight", detail::resize_rows(at("embedding.word_embeddings.weight"), V));
  put("transformer.wpe.weight", copy_of(at("embedding.position_embeddings.weight")));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = "transformer." + hf_layer(i);
    put(H + "ln_1.weight", copy_of(at(L + "self_attention.linear_qkv.layer_norm_weight")));
    put(H + "ln_1.bias", copy_of(at(L + "self_attention.linear_qkv.layer_norm_bias")));
    put(H + "attn.c_attn.weight",
        transpose(detail::qkv_rows_to_hf(at(L + "self_attention.linear_qkv.weight"), c)));
    put(H + "attn.c_attn.bias",
        detail::qkv_rows_to_hf(at(L + "self_attention.linear_qkv.bias"), c));
    put(H + "attn.c_proj.weight", transpose(at(L + "self_attention.linear_proj.weight")));
    put(H + "attn.c_proj.bias", copy_of(at(L + "self_attention.linear_proj.bias")));
    put(H + "ln_2.weight", copy_of(at(L + "mlp.linear_fc1.layer_norm_weight")));
    put(H + "ln_2.bias", copy_of(at(L + "mlp.linear_fc1.layer_norm_bias")));
    put(H + "mlp.c_fc.weight", transpose(at(L + "mlp.linear_fc1.weight")));
    put(H + "mlp.c_fc.bias", copy_of(at(L + "mlp.linear_fc1.bias")));
    put(H + "mlp.c_proj.weight", transpose(at(L + "mlp.linear_fc2.weight")));
    put(H + "mlp.c_proj.bias", copy_of(at(L + "mlp.linear_fc2.bias")));
  }
  put("transformer.ln_f.weight", copy_of(at("decoder.final_layernorm.weight")));
  put("transformer.ln_f.bias", copy_of(at("decoder.final_layernorm.bias")));

  nlohmann::json j = m.hf_config.is_object() ? m.hf_config : nlohmann::json::object();
  j["model_type"] = "gpt2";
  j["architectures"] = {"GPT2LMHeadModel"};
  j["vocab_size"] = V;
  j["n_embd"] = C;
  j["n_layer"] = c.num_layers;
  j["n_head"] = c.num_attention_heads;
  j["n_positions"] = c.max_positions();
  j["n_inner"] = c.ffn_size() == 4 * C ? nlohmann::json(nullptr) : nlohmann::json(c.ffn_size());
  j["layer_norm_epsilon"] = c.norm_epsilon;
  if (!j.contains("activation_function")) j["activation_function"] = "gelu_new";
  j["tie_word_embeddings"] = true;
  if (!j.contains("torch_dtype")) j["torch_dtype"] = "float32";
  detail::write_hf_dir(out_dir, out, j);
}

}  // namespace shardlm::ckpt
