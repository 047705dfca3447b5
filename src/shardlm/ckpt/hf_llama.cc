#include "shardlm/ckpt/hf_llama.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/detail/hf_files.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

using detail::copy_of;
using detail::layer_prefix;
using detail::row_block;
using detail::stack_rows;

namespace {
constexpr char kEmbed[] = "embedding.word_embeddings.weight";
constexpr char kOutput[] = "output_layer.weight";

std::string hf_layer(int64_t i) { return "layers." + std::to_string(i) + "."; }

// A config value that may be absent or null (HF writes both) as T, else `fallback`.
template <typename T>
T value_or(const nlohmann::json& j, const char* key, T fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<T>() : fallback;
}

// The RoPE settings: transformers >= 5 nests them in rope_parameters {rope_type, rope_theta,
// partial_rotary_factor, and the scaling's parameters}; 4.x has rope_theta /
// partial_rotary_factor at the top and the scaling in rope_scaling {rope_type (or type), ...}.
// rope_type default, linear (factor: ShardLM's --rotary-seq-len-interpolation-factor) and
// llama3 (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings:
// --use-rope-scaling and its flags) convert; the others are refused by name.
void read_rope(const nlohmann::json& h, const std::string& where, model::TransformerConfig& c) {
  const nlohmann::json scaling = value_or(h, "rope_scaling", nlohmann::json());
  SHARDLM_REQUIRE(scaling.is_null() || scaling.is_object(), ErrorKind::kCorruptData,
                  where + ": rope_scaling " + scaling.dump() + " is neither null nor an object");
  const nlohmann::json rp = value_or(h, "rope_parameters", nlohmann::json::object());
  const nlohmann::json& params = scaling.is_object() ? scaling : rp;
  const std::string key = scaling.is_object() ? "rope_scaling" : "rope_parameters";
  const std::string type =
      value_or(params, "rope_type", value_or(params, "type", std::string("default")));
  auto number = [&](const char* name) {
    SHARDLM_REQUIRE(params.contains(name) && params[name].is_number(), ErrorKind::kCorruptData,
                    where + ": " + key + " has rope_type '" + type + "' but no number '" + name +
                        "' (" + params.dump() + ")");
    return params[name].get<double>();
  };
  if (type == "linear") {
    c.rotary_seq_len_interpolation_factor = number("factor");
  } else if (type == "llama3") {
    c.use_rope_scaling = true;
    c.rope_scaling_factor = number("factor");
    c.rope_scaling_low_freq_factor = number("low_freq_factor");
    c.rope_scaling_high_freq_factor = number("high_freq_factor");
    // transformers falls back to the top-level key of that name, then to the model's context.
    c.rope_scaling_original_max_positions =
        params.contains("original_max_position_embeddings")
            ? number("original_max_position_embeddings")
            : value_or(h, "original_max_position_embeddings",
                       h.at("max_position_embeddings").get<double>());
  } else {
    SHARDLM_REQUIRE(type == "default", ErrorKind::kUnsupported,
                    where + ": " + key + ".rope_type '" + type +
                        "' is not supported; ShardLM's RoPE converts rope_type default, linear "
                        "and llama3");
  }
  c.rotary_base = value_or(rp, "rope_theta", value_or(h, "rope_theta", 10000.0));
  c.rotary_percent =
      value_or(rp, "partial_rotary_factor", value_or(h, "partial_rotary_factor", 1.0));
  const std::string why = ops::rope_frequencies_error(c.rope_frequencies());
  SHARDLM_REQUIRE(why.empty(), ErrorKind::kInvalidConfig,
                  where + ": the RoPE settings (" + key + " " + params.dump() +
                      ") are not usable: " + why);
}

// The scaling's keys as read_rope reads them: {rope_type, parameters...}.
nlohmann::json rope_scaling_json(const model::TransformerConfig& c) {
  nlohmann::json s = nlohmann::json::object();
  if (c.use_rope_scaling) {
    s["rope_type"] = "llama3";
    s["factor"] = c.rope_scaling_factor;
    s["low_freq_factor"] = c.rope_scaling_low_freq_factor;
    s["high_freq_factor"] = c.rope_scaling_high_freq_factor;
    // A context length: an integer in every Llama 3.x config.json, so written as one when whole.
    const double original = c.rope_scaling_original_max_positions;
    s["original_max_position_embeddings"] =
        original == std::floor(original) && std::abs(original) < 9e15
            ? nlohmann::json(static_cast<int64_t>(original))
            : nlohmann::json(original);
  } else if (c.rotary_seq_len_interpolation_factor != 1.0) {
    s["rope_type"] = "linear";
    s["factor"] = c.rotary_seq_len_interpolation_factor;
  } else {
    s["rope_type"] = "default";
  }
  return s;
}

model::TransformerConfig read_config(const nlohmann::json& h, const std::string& where) {
  const std::string type = h.value("model_type", std::string());
  SHARDLM_REQUIRE(type == "llama", ErrorKind::kUnsupported,
                  where + " has model_type '" + type + "'; --model-type llama reads Llama models");
  const std::string act = value_or(h, "hidden_act", std::string("silu"));
  SHARDLM_REQUIRE(act == "silu", ErrorKind::kUnsupported,
                  where + ": hidden_act '" + act +
                      "' is not supported (ShardLM's SwiGLU uses silu); only hidden_act \"silu\" "
                      "converts");
  for (const char* key : {"attention_bias", "mlp_bias"})
    SHARDLM_REQUIRE(!value_or(h, key, false), ErrorKind::kUnsupported,
                    where + ": " + key +
                        " true is not supported (the Llama family here has no linear biases); "
                        "only " + key + " false converts");
  model::TransformerConfig c;
  c.num_layers = h.at("num_hidden_layers").get<int64_t>();
  c.hidden_size = h.at("hidden_size").get<int64_t>();
  c.num_attention_heads = h.at("num_attention_heads").get<int64_t>();
  c.num_query_groups = value_or(h, "num_key_value_heads", c.num_attention_heads);
  const int64_t head_dim = value_or(h, "head_dim", int64_t{0});
  // kv_channels stays 0 (= hidden / heads) unless head_dim says otherwise, as Megatron's flags.
  if (head_dim > 0 && head_dim * c.num_attention_heads != c.hidden_size) c.kv_channels = head_dim;
  c.ffn_hidden_size = h.at("intermediate_size").get<int64_t>();
  c.max_position_embeddings = h.at("max_position_embeddings").get<int64_t>();
  c.seq_length = c.max_position_embeddings;
  c.vocab_size = h.at("vocab_size").get<int64_t>();
  c.untie_embeddings_and_output_weights = !value_or(h, "tie_word_embeddings", false);
  c.add_bias_linear = false;
  c.swiglu = true;
  c.normalization = model::Normalization::kRMSNorm;
  c.norm_epsilon = value_or(h, "rms_norm_eps", 1e-6);
  c.position_embedding = model::PositionEmbedding::kRope;
  c.rotary_interleaved = false;  // HF Llama rotates halves
  read_rope(h, where, c);
  c.hidden_dropout = 0.0;  // Llama has no residual dropout
  c.attention_dropout = value_or(h, "attention_dropout", 0.0);
  c.init_method_std = value_or(h, "initializer_range", c.init_method_std);
  return c;
}
}  // namespace

HfModel read_hf_llama(const std::string& hf_dir, int64_t divisible_by, int64_t tp) {
  const fs::path dir(hf_dir);
  HfModel m;
  m.hf_config = detail::read_json_file(dir / "config.json");
  m.config = read_config(m.hf_config, "'" + (dir / "config.json").string() + "'");
  model::TransformerConfig& c = m.config;
  c.make_vocab_size_divisible_by = divisible_by;
  c.tensor_model_parallel_size = tp;
  c.validate();

  const detail::HfTensors hf(dir, "Llama");
  const std::string prefix = hf.contains("model.embed_tokens.weight") ? "model." : "";
  const int64_t C = c.hidden_size, V = c.vocab_size, Vp = c.padded_vocab_size(),
                F = c.ffn_size(), HS = c.head_dim(), NH = c.num_attention_heads,
                G = c.query_groups();
  std::set<std::string> used;
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    used.insert(name);
    return hf.get(name, shape);
  };

  OwnedTensor embed = get(prefix + "embed_tokens.weight", {V, C});
  if (c.untie_embeddings_and_output_weights) {
    m.tensors[kOutput] = detail::resize_rows(get("lm_head.weight", {V, C}), Vp);
  } else if (hf.contains("lm_head.weight")) {
    OwnedTensor head = get("lm_head.weight", {V, C});
    SHARDLM_REQUIRE(std::memcmp(head.view().raw(), embed.view().raw(), embed.view().nbytes()) == 0,
                    ErrorKind::kCorruptData,
                    "config.json says tie_word_embeddings true but lm_head.weight differs from "
                    "embed_tokens.weight; set tie_word_embeddings false to import both");
  }
  m.tensors[kEmbed] = detail::resize_rows(embed, Vp);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = prefix + hf_layer(i);
    m.tensors[L + "self_attention.linear_qkv.layer_norm_weight"] =
        get(H + "input_layernorm.weight", {C});
    {
      OwnedTensor q = get(H + "self_attn.q_proj.weight", {NH * HS, C});
      OwnedTensor k = get(H + "self_attn.k_proj.weight", {G * HS, C});
      OwnedTensor v = get(H + "self_attn.v_proj.weight", {G * HS, C});
      m.tensors[L + "self_attention.linear_qkv.weight"] =
          detail::qkv_rows_from_hf(stack_rows({&q.view(), &k.view(), &v.view()}), c);
    }
    m.tensors[L + "self_attention.linear_proj.weight"] =
        get(H + "self_attn.o_proj.weight", {C, NH * HS});
    m.tensors[L + "mlp.linear_fc1.layer_norm_weight"] =
        get(H + "post_attention_layernorm.weight", {C});
    {
      OwnedTensor gate = get(H + "mlp.gate_proj.weight", {F, C});
      OwnedTensor up = get(H + "mlp.up_proj.weight", {F, C});
      m.tensors[L + "mlp.linear_fc1.weight"] = stack_rows({&gate.view(), &up.view()});
    }
    m.tensors[L + "mlp.linear_fc2.weight"] = get(H + "mlp.down_proj.weight", {C, F});
  }
  m.tensors["decoder.final_layernorm.weight"] = get(prefix + "norm.weight", {C});

  // A tensor we would drop (a bias, an extra layer, a q/k norm) means another architecture.
  for (const std::string& name : hf.names()) {
    if (used.count(name) != 0 || name.ends_with("rotary_emb.inv_freq")) continue;  // a buffer
    throw Error(ErrorKind::kUnsupported,
                "'" + hf_dir + "': tensor '" + name + "' has no place in a Llama model with " +
                    std::to_string(c.num_layers) + " layers (num_hidden_layers) and no biases; "
                    "this architecture is not supported by --model-type llama");
  }
  for (const auto& [name, shape] : model_parameter_shapes(c)) {
    auto it = m.tensors.find(name);
    SHARDLM_CHECK(it != m.tensors.end());
    SHARDLM_CHECK(it->second.view().shape() == shape);
  }
  return m;
}

void write_hf_llama(const HfModel& m, const std::string& out_dir) {
  const model::TransformerConfig& c = m.config;
  SHARDLM_REQUIRE(c.num_experts == 0, ErrorKind::kUnsupported,
                  "the model has MoE layers (--num-experts " + std::to_string(c.num_experts) +
                      "); Hugging Face Llama has dense MLPs only, and a Mixtral export is not "
                      "implemented");
  SHARDLM_REQUIRE(!c.add_bias_linear && c.swiglu &&
                      c.normalization == model::Normalization::kRMSNorm &&
                      c.position_embedding == model::PositionEmbedding::kRope,
                  ErrorKind::kUnsupported,
                  "this model is not a Llama architecture (needs --disable-bias-linear --swiglu "
                  "--normalization RMSNorm --position-embedding-type rope); --to hf --model-type "
                  "llama cannot express it");
  SHARDLM_REQUIRE(!c.rotary_interleaved, ErrorKind::kUnsupported,
                  "the model uses --rotary-interleaved RoPE, but Hugging Face Llama rotates "
                  "halves; --to hf --model-type llama cannot express it");
  SHARDLM_REQUIRE(!(c.use_rope_scaling && c.rotary_seq_len_interpolation_factor != 1.0),
                  ErrorKind::kUnsupported,
                  "the model uses both --use-rope-scaling and --rotary-seq-len-interpolation-"
                  "factor, but a Hugging Face config has one rope_type; --to hf --model-type llama "
                  "cannot express it");
  const int64_t C = c.hidden_size, V = c.vocab_size, F = c.ffn_size(), HS = c.head_dim(),
                NH = c.num_attention_heads, G = c.query_groups();
  auto at = [&](const std::string& name) -> const Tensor& {
    return detail::parameter(m.tensors, name);
  };
  std::vector<std::pair<std::string, OwnedTensor>> out;
  auto put = [&](const std::string& name, OwnedTensor t) { out.emplace_back(name, std::move(t)); };
  put("model.embed_tokens.weight", detail::resize_rows(at(kEmbed), V));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = "model." + hf_layer(i);
    put(H + "input_layernorm.weight",
        copy_of(at(L + "self_attention.linear_qkv.layer_norm_weight")));
    const OwnedTensor qkv = detail::qkv_rows_to_hf(at(L + "self_attention.linear_qkv.weight"), c);
    put(H + "self_attn.q_proj.weight", row_block(qkv, 0, NH * HS));
    put(H + "self_attn.k_proj.weight", row_block(qkv, NH * HS, G * HS));
    put(H + "self_attn.v_proj.weight", row_block(qkv, (NH + G) * HS, G * HS));
    put(H + "self_attn.o_proj.weight", copy_of(at(L + "self_attention.linear_proj.weight")));
    put(H + "post_attention_layernorm.weight", copy_of(at(L + "mlp.linear_fc1.layer_norm_weight")));
    const Tensor& fc1 = at(L + "mlp.linear_fc1.weight");
    put(H + "mlp.gate_proj.weight", row_block(fc1, 0, F));
    put(H + "mlp.up_proj.weight", row_block(fc1, F, F));
    put(H + "mlp.down_proj.weight", copy_of(at(L + "mlp.linear_fc2.weight")));
  }
  put("model.norm.weight", copy_of(at("decoder.final_layernorm.weight")));
  if (c.untie_embeddings_and_output_weights)
    put("lm_head.weight", detail::resize_rows(at(kOutput), V));

  // Keep what the source config.json said (token ids, dtype, ...); overwrite the architecture.
  nlohmann::json j = m.hf_config.is_object() ? m.hf_config : nlohmann::json::object();
  j["model_type"] = "llama";
  j["architectures"] = {"LlamaForCausalLM"};
  j["vocab_size"] = V;
  j["hidden_size"] = C;
  j["intermediate_size"] = F;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = NH;
  j["num_key_value_heads"] = G;
  j["head_dim"] = HS;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.norm_epsilon;
  j["tie_word_embeddings"] = !c.untie_embeddings_and_output_weights;
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  // RoPE has no length limit of its own: keep the source's context length, else seq_length.
  if (!j.contains("max_position_embeddings")) j["max_position_embeddings"] = c.max_positions();
  // transformers >= 5 reads rope_parameters, 4.x (and 5, as legacy) rope_theta at the top and
  // the scaling in rope_scaling.
  nlohmann::json& rope = j.contains("rope_parameters") && j["rope_parameters"].is_object()
                             ? j["rope_parameters"]
                             : j;
  const nlohmann::json scaling = rope_scaling_json(c);
  if (&rope != &j) {
    for (const char* k : {"type", "factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"})
      rope.erase(k);
    rope.update(scaling);
    // A legacy copy at the top would be read first (by transformers and read_rope): drop it.
    j.erase("rope_scaling");
    j.erase("rope_theta");
  } else {
    j["rope_scaling"] = scaling["rope_type"] == "default" ? nlohmann::json(nullptr) : scaling;
  }
  rope["rope_theta"] = c.rotary_base;
  if (c.rotary_percent != 1.0) rope["partial_rotary_factor"] = c.rotary_percent;
  else rope.erase("partial_rotary_factor");
  if (!j.contains("torch_dtype") && !j.contains("dtype")) j["torch_dtype"] = "float32";
  detail::write_hf_dir(out_dir, out, j);
}

}  // namespace shardlm::ckpt
