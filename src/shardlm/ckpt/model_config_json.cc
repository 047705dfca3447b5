#include "shardlm/ckpt/model_config_json.h"

#include <sstream>

#include "shardlm/base/error.h"

namespace shardlm::ckpt {

namespace {
const char* norm_name(model::Normalization n) {
  return n == model::Normalization::kRMSNorm ? "RMSNorm" : "LayerNorm";
}
const char* position_name(model::PositionEmbedding p) {
  switch (p) {
    case model::PositionEmbedding::kNone: return "none";
    case model::PositionEmbedding::kRope: return "rope";
    case model::PositionEmbedding::kLearnedAbsolute: break;
  }
  return "learned_absolute";
}
bool rope(const model::TransformerConfig& c) {
  return c.position_embedding == model::PositionEmbedding::kRope;
}
// A RoPE setting, or null without RoPE (where it changes nothing).
template <typename T>
nlohmann::json if_rope(const model::TransformerConfig& c, T v) {
  return rope(c) ? nlohmann::json(v) : nlohmann::json(nullptr);
}
// A Llama 3 RoPE-scaling setting, or null without it.
nlohmann::json if_llama3(const model::TransformerConfig& c, double v) {
  return rope(c) && c.use_rope_scaling ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// An MoE setting, or null for a dense model (so checkpoints from before MoE still match).
template <typename T>
nlohmann::json if_moe(const model::TransformerConfig& c, T v) {
  return c.num_experts > 0 ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// An architecture field: its JSON key, its flag, and the value in the form the flag takes.
struct Field {
  const char* key;
  const char* flag;
  nlohmann::json (*value)(const model::TransformerConfig&);
};
const Field kFields[] = {
    // First: a GPT checkpoint loaded as BERT (or back) is named as that, not as a missing tensor.
    {"model_type", "--model-type",
     [](const auto& c) { return nlohmann::json(c.bert() ? "bert" : c.t5() ? "t5" : "gpt"); }},
    {"encoder_num_layers", "--encoder-num-layers",
     [](const auto& c) { return c.t5() ? nlohmann::json(c.t5_encoder_layers()) : nlohmann::json(); }},
    {"bert_binary_head", "--bert-no-binary-head",
     [](const auto& c) { return c.bert() ? nlohmann::json(c.bert_binary_head) : nlohmann::json(); }},
    {"num_layers", "--num-layers", [](const auto& c) { return nlohmann::json(c.num_layers); }},
    {"hidden_size", "--hidden-size", [](const auto& c) { return nlohmann::json(c.hidden_size); }},
    {"num_attention_heads", "--num-attention-heads",
     [](const auto& c) { return nlohmann::json(c.num_attention_heads); }},
    {"num_query_groups", "--num-query-groups",
     [](const auto& c) { return nlohmann::json(c.query_groups()); }},
    {"kv_channels", "--kv-channels", [](const auto& c) { return nlohmann::json(c.head_dim()); }},
    {"ffn_hidden_size", "--ffn-hidden-size",
     [](const auto& c) { return nlohmann::json(c.ffn_size()); }},
    // Before max_position_embeddings, which depends on it: the error names the cause.
    {"position_embedding_type", "--position-embedding-type",
     [](const auto& c) { return nlohmann::json(position_name(c.position_embedding)); }},
    // Only a learned position table has a length; RoPE computes positions up to seq_length.
    {"max_position_embeddings", "--max-position-embeddings",
     [](const auto& c) {
       return c.position_embedding == model::PositionEmbedding::kLearnedAbsolute
                  ? nlohmann::json(c.max_positions())
                  : nlohmann::json(nullptr);
     }},
    {"vocab_size", "--vocab-size", [](const auto& c) { return nlohmann::json(c.vocab_size); }},
    {"untie_embeddings_and_output_weights", "--untie-embeddings-and-output-weights",
     [](const auto& c) { return nlohmann::json(c.untie_embeddings_and_output_weights); }},
    {"add_bias_linear", "--disable-bias-linear",
     [](const auto& c) { return nlohmann::json(c.add_bias_linear); }},
    {"swiglu", "--swiglu", [](const auto& c) { return nlohmann::json(c.swiglu); }},
    {"normalization", "--normalization",
     [](const auto& c) { return nlohmann::json(norm_name(c.normalization)); }},
    {"norm_epsilon", "--norm-epsilon",
     [](const auto& c) { return nlohmann::json(c.norm_epsilon); }},
    {"rotary_base", "--rotary-base", [](const auto& c) { return if_rope(c, c.rotary_base); }},
    {"rotary_percent", "--rotary-percent",
     [](const auto& c) { return if_rope(c, c.rotary_percent); }},
    {"rotary_interleaved", "--rotary-interleaved",
     [](const auto& c) { return if_rope(c, c.rotary_interleaved); }},
    {"use_rope_scaling", "--use-rope-scaling",
     [](const auto& c) { return if_rope(c, c.use_rope_scaling); }},
    {"rope_scaling_factor", "--rope-scaling-factor",
     [](const auto& c) { return if_llama3(c, c.rope_scaling_factor); }},
    {"rope_scaling_low_freq_factor", "--rope-scaling-low-freq-factor",
     [](const auto& c) { return if_llama3(c, c.rope_scaling_low_freq_factor); }},
    {"rope_scaling_high_freq_factor", "--rope-scaling-high-freq-factor",
     [](const auto& c) { return if_llama3(c, c.rope_scaling_high_freq_factor); }},
    {"rope_scaling_original_max_position_embeddings",
     "--rope-scaling-original-max-position-embeddings",
     [](const auto& c) { return if_llama3(c, c.rope_scaling_original_max_positions); }},
    {"rotary_seq_len_interpolation_factor", "--rotary-seq-len-interpolation-factor",
     [](const auto& c) { return if_rope(c, c.rotary_seq_len_interpolation_factor); }},
    {"num_experts", "--num-experts", [](const auto& c) { return if_moe(c, c.num_experts); }},
    {"moe_router_topk", "--moe-router-topk",
     [](const auto& c) { return if_moe(c, c.moe_router_topk); }},
    {"moe_ffn_hidden_size", "--moe-ffn-hidden-size",
     [](const auto& c) { return if_moe(c, c.moe_ffn_size()); }},
    {"moe_layer_freq", "--moe-layer-freq",
     [](const auto& c) { return if_moe(c, c.moe_layer_freq); }},
    {"moe_router_pre_softmax", "--moe-router-pre-softmax",
     [](const auto& c) { return if_moe(c, c.moe_router_pre_softmax); }},
    {"moe_router_topk_scaling_factor", "--moe-router-topk-scaling-factor",
     [](const auto& c) {
       return c.num_experts > 0 && c.moe_router_topk_scaling_factor > 0
                  ? nlohmann::json(c.moe_router_topk_scaling_factor)
                  : nlohmann::json();
     }},
};
}  // namespace

nlohmann::json model_config_to_json(const model::TransformerConfig& c) {
  nlohmann::json j;
  for (const Field& f : kFields) j[f.key] = f.value(c);
  j["seq_length"] = c.seq_length;
  if (c.t5()) j["decoder_seq_length"] = c.decoder_seq_length;
  j["make_vocab_size_divisible_by"] = c.make_vocab_size_divisible_by;
  j["padded_vocab_size"] = c.padded_vocab_size();
  j["init_method_std"] = c.init_method_std;
  j["hidden_dropout"] = c.hidden_dropout;
  j["attention_dropout"] = c.attention_dropout;
  if (c.num_experts > 0) j["moe_aux_loss_coeff"] = c.moe_aux_coeff();
  return j;
}

model::TransformerConfig model_config_from_json(const nlohmann::json& j) {
  model::TransformerConfig c;
  auto get = [&](const char* key, auto& field) {
    if (j.contains(key) && !j[key].is_null()) field = j[key].get<std::decay_t<decltype(field)>>();
  };
  const std::string type = j.value("model_type", std::string("gpt"));
  if (type == "bert") c.family = model::ModelFamily::kBert;
  if (type == "t5") c.family = model::ModelFamily::kT5;
  get("encoder_num_layers", c.encoder_num_layers);
  get("bert_binary_head", c.bert_binary_head);
  get("num_layers", c.num_layers);
  get("hidden_size", c.hidden_size);
  get("num_attention_heads", c.num_attention_heads);
  get("num_query_groups", c.num_query_groups);
  get("kv_channels", c.kv_channels);
  get("ffn_hidden_size", c.ffn_hidden_size);
  get("seq_length", c.seq_length);
  get("decoder_seq_length", c.decoder_seq_length);
  get("max_position_embeddings", c.max_position_embeddings);
  get("vocab_size", c.vocab_size);
  get("make_vocab_size_divisible_by", c.make_vocab_size_divisible_by);
  get("untie_embeddings_and_output_weights", c.untie_embeddings_and_output_weights);
  get("add_bias_linear", c.add_bias_linear);
  get("swiglu", c.swiglu);
  get("norm_epsilon", c.norm_epsilon);
  get("rotary_base", c.rotary_base);
  get("rotary_percent", c.rotary_percent);
  get("rotary_interleaved", c.rotary_interleaved);
  get("use_rope_scaling", c.use_rope_scaling);
  get("rope_scaling_factor", c.rope_scaling_factor);
  get("rope_scaling_low_freq_factor", c.rope_scaling_low_freq_factor);
  get("rope_scaling_high_freq_factor", c.rope_scaling_high_freq_factor);
  get("rope_scaling_original_max_position_embeddings", c.rope_scaling_original_max_positions);
  get("rotary_seq_len_interpolation_factor", c.rotary_seq_len_interpolation_factor);
  get("init_method_std", c.init_method_std);
  get("hidden_dropout", c.hidden_dropout);
  get("attention_dropout", c.attention_dropout);
  get("num_experts", c.num_experts);
  get("moe_router_topk", c.moe_router_topk);
  get("moe_ffn_hidden_size", c.moe_ffn_hidden_size);
  get("moe_layer_freq", c.moe_layer_freq);
  get("moe_router_pre_softmax", c.moe_router_pre_softmax);
  get("moe_router_topk_scaling_factor", c.moe_router_topk_scaling_factor);
  get("moe_aux_loss_coeff", c.moe_aux_loss_coeff);
  if (j.value("normalization", std::string("LayerNorm")) == "RMSNorm")
    c.normalization = model::Normalization::kRMSNorm;
  const std::string position = j.value("position_embedding_type", std::string("learned_absolute"));
  if (position == "none") c.position_embedding = model::PositionEmbedding::kNone;
  if (position == "rope") c.position_embedding = model::PositionEmbedding::kRope;
  return c;
}

void check_model_config(const nlohmann::json& saved, const model::TransformerConfig& flags,
                        const std::string& checkpoint_dir) {
  // A key an older checkpoint lacks means the default it was saved with (learned positions, ...).
  const model::TransformerConfig saved_cfg = model_config_from_json(saved);
  for (const Field& f : kFields) {
    const nlohmann::json want = saved.contains(f.key) ? saved[f.key] : f.value(saved_cfg);
    const nlohmann::json have = f.value(flags);
    if (want == have) continue;
    throw Error(ErrorKind::kInvalidConfig,
                std::string("checkpoint '") + checkpoint_dir + "' was saved with a different " +
                    "model: " + f.flag + " (" + f.key + ") is " + want.dump() +
                    " in the checkpoint but " + have.dump() +
                    " from the flags; pass the checkpoint's model flags (" +
                    model_config_flags(saved_cfg) + ")");
  }
}

std::string model_config_flags(const model::TransformerConfig& c) {
  std::ostringstream s;
  if (c.bert()) s << "--model-type bert " << (c.bert_binary_head ? "" : "--bert-no-binary-head ");
  if (c.t5()) s << "--model-type t5 --encoder-num-layers " << c.t5_encoder_layers() << " ";
  s << "--num-layers " << c.num_layers << " --hidden-size " << c.hidden_size
    << " --num-attention-heads " << c.num_attention_heads;
  if (c.query_groups() != c.num_attention_heads)
    s << " --group-query-attention --num-query-groups " << c.query_groups();
  if (c.kv_channels > 0) s << " --kv-channels " << c.kv_channels;
  if (c.ffn_hidden_size > 0) s << " --ffn-hidden-size " << c.ffn_hidden_size;
  // Doubles as JSON writes them: the shortest text that reads back to the same value.
  auto num = [](double v) { return nlohmann::json(v).dump(); };
  if (c.position_embedding == model::PositionEmbedding::kNone) {
    s << " --position-embedding-type none";
  } else if (rope(c)) {
    s << " --position-embedding-type rope";
    const model::TransformerConfig d;
    if (c.rotary_base != d.rotary_base) s << " --rotary-base " << num(c.rotary_base);
    if (c.rotary_percent != d.rotary_percent) s << " --rotary-percent " << num(c.rotary_percent);
    if (c.rotary_interleaved) s << " --rotary-interleaved";
    if (c.use_rope_scaling) {
      s << " --use-rope-scaling";
      if (c.rope_scaling_factor != d.rope_scaling_factor)
        s << " --rope-scaling-factor " << num(c.rope_scaling_factor);
      if (c.rope_scaling_low_freq_factor != d.rope_scaling_low_freq_factor)
        s << " --rope-scaling-low-freq-factor " << num(c.rope_scaling_low_freq_factor);
      if (c.rope_scaling_high_freq_factor != d.rope_scaling_high_freq_factor)
        s << " --rope-scaling-high-freq-factor " << num(c.rope_scaling_high_freq_factor);
      if (c.rope_scaling_original_max_positions != d.rope_scaling_original_max_positions)
        s << " --rope-scaling-original-max-position-embeddings "
          << num(c.rope_scaling_original_max_positions);
    }
    if (c.rotary_seq_len_interpolation_factor != d.rotary_seq_len_interpolation_factor)
      s << " --rotary-seq-len-interpolation-factor " << num(c.rotary_seq_len_interpolation_factor);
  } else {
    s << " --max-position-embeddings " << c.max_positions();
  }
  s << " --vocab-size " << c.vocab_size;
  if (c.untie_embeddings_and_output_weights) s << " --untie-embeddings-and-output-weights";
  if (!c.add_bias_linear) s << " --disable-bias-linear";
  if (c.swiglu) s << " --swiglu";
  if (c.normalization == model::Normalization::kRMSNorm) s << " --normalization RMSNorm";
  if (c.norm_epsilon != model::TransformerConfig().norm_epsilon)
    s << " --norm-epsilon " << num(c.norm_epsilon);
  if (c.num_experts > 0) {
    s << " --num-experts " << c.num_experts << " --moe-router-topk " << c.moe_router_topk;
    if (c.moe_ffn_hidden_size > 0) s << " --moe-ffn-hidden-size " << c.moe_ffn_hidden_size;
    if (c.moe_layer_freq != 1) s << " --moe-layer-freq " << c.moe_layer_freq;
    if (c.moe_router_pre_softmax) s << " --moe-router-pre-softmax";
    if (c.moe_router_topk_scaling_factor > 0)
      s << " --moe-router-topk-scaling-factor " << num(c.moe_router_topk_scaling_factor);
  }
  return s.str();
}

}  // namespace shardlm::ckpt
