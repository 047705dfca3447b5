#include "shardlm/ckpt/hf_bert.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/detail/hf_files.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

using detail::copy_of;
using detail::layer_prefix;
using detail::resize_rows;
using detail::row_block;

namespace {
constexpr char kEmbed[] = "embedding.word_embeddings.weight";
constexpr char kOutput[] = "output_layer.weight";
constexpr char kTokentypes[] = "embedding.tokentype_embeddings.weight";
constexpr char kHfEmbed[] = "bert.embeddings.word_embeddings.weight";
constexpr char kHfTokentypes[] = "bert.embeddings.token_type_embeddings.weight";
constexpr char kHfBinary[] = "cls.seq_relationship.weight";

// The HF encoder layer's prefix.
std::string hf_layer(int64_t i) { return "bert.encoder.layer." + std::to_string(i) + "."; }

// ShardLM name -> HF name of the tensors both sides hold as they are (no regrouping, padding or
// stacking), for layer i (i < 0: the ones outside the layers). `binary`: with the binary head.
std::vector<std::pair<std::string, std::string>> plain_names(int64_t i, bool binary) {
  if (i >= 0) {
    const std::string L = layer_prefix(i), H = hf_layer(i);
    return {{L + "self_attention.linear_qkv.layer_norm_weight", H + "attention.ln.weight"},
            {L + "self_attention.linear_qkv.layer_norm_bias", H + "attention.ln.bias"},
            {L + "self_attention.linear_proj.weight", H + "attention.output.dense.weight"},
            {L + "self_attention.linear_proj.bias", H + "attention.output.dense.bias"},
            {L + "mlp.linear_fc1.layer_norm_weight", H + "ln.weight"},
            {L + "mlp.linear_fc1.layer_norm_bias", H + "ln.bias"},
            {L + "mlp.linear_fc1.weight", H + "intermediate.dense.weight"},
            {L + "mlp.linear_fc1.bias", H + "intermediate.dense.bias"},
            {L + "mlp.linear_fc2.weight", H + "output.dense.weight"},
            {L + "mlp.linear_fc2.bias", H + "output.dense.bias"}};
  }
  std::vector<std::pair<std::string, std::string>> out = {
      {"embedding.position_embeddings.weight", "bert.embeddings.position_embeddings.weight"},
      {"decoder.final_layernorm.weight", "bert.encoder.ln.weight"},
      {"decoder.final_layernorm.bias", "bert.encoder.ln.bias"},
      {"lm_head.dense.weight", "cls.predictions.transform.dense.weight"},
      {"lm_head.dense.bias", "cls.predictions.transform.dense.bias"},
      {"lm_head.layer_norm.weight", "cls.predictions.transform.LayerNorm.weight"},
      {"lm_head.layer_norm.bias", "cls.predictions.transform.LayerNorm.bias"}};
  if (binary) {
    out.insert(out.end(), {{kTokentypes, kHfTokentypes},
                           {"pooler.dense.weight", "bert.pooler.dense.weight"},
                           {"pooler.dense.bias", "bert.pooler.dense.bias"},
                           {"binary_head.weight", kHfBinary},
                           {"binary_head.bias", "cls.seq_relationship.bias"}});
  }
  return out;
}

bool all_zero(const Tensor& t) {
  const float* p = t.data<float>();
  for (int64_t k = 0; k < t.numel(); ++k)
    if (p[k] != 0.0f) return false;
  return true;
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The architecture from config.json (the binary head is decided by the tensors).
model::TransformerConfig read_config(const nlohmann::json& h, const std::string& where,
                                     std::vector<std::string>& notes) {
  const std::string type = h.value("model_type", std::string());
  SHARDLM_REQUIRE(type == "megatron-bert", ErrorKind::kUnsupported,
                  where + " has model_type '" + type +
                      "'; --model-type megatron-bert reads Megatron-BERT models "
                      "(transformers' MegatronBert*)");
  // transformers' MegatronBertConfig defaults to the erf GELU.
  const std::string act = h.value("hidden_act", std::string("gelu"));
  if (act == "gelu") {
    notes.push_back("hidden_act \"gelu\" is the erf GELU; ShardLM runs the tanh approximation "
                    "(gelu_new), which differs by about 1e-3 per activation, so logits differ "
                    "slightly from transformers'; an export writes hidden_act \"gelu_new\"");
  } else {
    SHARDLM_REQUIRE(act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast",
                    ErrorKind::kUnsupported,
                    where + ": hidden_act '" + act +
                        "' is not supported (ShardLM's GELU is the tanh approximation: gelu_new, "
                        "gelu_pytorch_tanh, gelu_fast convert; gelu converts approximately)");
  }
  const std::string position = h.value("position_embedding_type", std::string("absolute"));
  SHARDLM_REQUIRE(position == "absolute", ErrorKind::kUnsupported,
                  where + ": position_embedding_type '" + position +
                      "' is not supported; only \"absolute\" (learned positions) converts");
  for (const char* key : {"is_decoder", "add_cross_attention"})
    SHARDLM_REQUIRE(!h.value(key, false), ErrorKind::kUnsupported,
                    where + ": " + key + " true is not supported (ShardLM's BERT is a "
                    "bidirectional encoder); only " + key + " false converts");
  model::TransformerConfig c;
  c.family = model::ModelFamily::kBert;
  c.num_layers = h.at("num_hidden_layers").get<int64_t>();
  c.hidden_size = h.at("hidden_size").get<int64_t>();
  c.num_attention_heads = h.at("num_attention_heads").get<int64_t>();
  c.ffn_hidden_size = h.at("intermediate_size").get<int64_t>();
  c.max_position_embeddings = h.at("max_position_embeddings").get<int64_t>();
  c.seq_length = c.max_position_embeddings;
  c.vocab_size = h.at("vocab_size").get<int64_t>();
  c.untie_embeddings_and_output_weights = !h.value("tie_word_embeddings", true);
  c.norm_epsilon = h.value("layer_norm_eps", 1e-12);
  c.hidden_dropout = h.value("hidden_dropout_prob", 0.1);
  c.attention_dropout = h.value("attention_probs_dropout_prob", 0.1);
  c.init_method_std = h.value("initializer_range", c.init_method_std);
  return c;
}
}  // namespace

HfModel read_hf_megatron_bert(const std::string& hf_dir, int64_t divisible_by, int64_t tp) {
  const fs::path dir(hf_dir);
  HfModel m;
  m.hf_config = detail::read_json_file(dir / "config.json");
  const std::string where = "'" + (dir / "config.json").string() + "'";
  m.config = read_config(m.hf_config, where, m.notes);
  model::TransformerConfig& c = m.config;
  c.make_vocab_size_divisible_by = divisible_by;
  c.tensor_model_parallel_size = tp;

  const detail::HfTensors hf(dir, "Megatron-BERT");
  c.bert_binary_head = hf.contains(kHfBinary);
  c.validate();
  const int64_t C = c.hidden_size, V = c.vocab_size, Vp = c.padded_vocab_size();
  std::set<std::string> used;
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    used.insert(name);
    return hf.get(name, shape);
  };

  OwnedTensor embed = get(kHfEmbed, {V, C});
  if (hf.contains("cls.predictions.decoder.weight")) {
    OwnedTensor head = get("cls.predictions.decoder.weight", {V, C});
    if (c.untie_embeddings_and_output_weights) {
      m.tensors[kOutput] = resize_rows(head, Vp);
    } else {
      SHARDLM_REQUIRE(same_values(head.view(), embed.view()), ErrorKind::kCorruptData,
                      where + " says tie_word_embeddings true but cls.predictions.decoder.weight "
                      "differs from " + kHfEmbed + "; set tie_word_embeddings false to import "
                      "both");
    }
  } else {
    SHARDLM_REQUIRE(!c.untie_embeddings_and_output_weights, ErrorKind::kCorruptData,
                    where + " says tie_word_embeddings false but the checkpoint lacks "
                    "cls.predictions.decoder.weight");
  }
  m.tensors[kEmbed] = resize_rows(embed, Vp);
  {  // The output bias: transformers saves it as cls.predictions.bias, the decoder's alias.
    const char* names[] = {"cls.predictions.bias", "cls.predictions.decoder.bias"};
    const bool first = hf.contains(names[0]);
    OwnedTensor bias = get(first ? names[0] : names[1], {V});
    if (first && hf.contains(names[1]))
      SHARDLM_REQUIRE(same_values(get(names[1], {V}).view(), bias.view()),
                      ErrorKind::kCorruptData,
                      "'" + hf_dir + "': cls.predictions.decoder.bias differs from "
                      "cls.predictions.bias (transformers ties them)");
    m.tensors["output_layer.bias"] = resize_rows(bias, Vp);
  }
  if (!c.bert_binary_head && hf.contains(kHfTokentypes)) {
    // Without the binary head ShardLM has no token types: HF's table must add nothing.
    const int64_t types = m.hf_config.value("type_vocab_size", int64_t{2});
    SHARDLM_REQUIRE(all_zero(get(kHfTokentypes, {types, C}).view()), ErrorKind::kUnsupported,
                    "'" + hf_dir + "' has non-zero " + kHfTokentypes + " but no " + kHfBinary +
                        ": ShardLM's BERT has token types only with the binary head "
                        "(pooler + sentence-order head), so this model cannot convert");
  }
  if (c.bert_binary_head) {
    const int64_t types = m.hf_config.value("type_vocab_size", int64_t{2});
    SHARDLM_REQUIRE(types == 2, ErrorKind::kUnsupported,
                    where + ": type_vocab_size " + std::to_string(types) +
                        " is not supported; Megatron's BERT has 2 token types (sentence A/B)");
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = hf_layer(i) + "attention.self.";
    std::vector<OwnedTensor> w, b;
    for (const char* part : {"query", "key", "value"}) {
      w.push_back(get(H + part + ".weight", {C, C}));
      b.push_back(get(H + part + ".bias", {C}));
    }
    m.tensors[L + "self_attention.linear_qkv.weight"] = detail::qkv_rows_from_hf(
        detail::stack_rows({&w[0].view(), &w[1].view(), &w[2].view()}), c);
    m.tensors[L + "self_attention.linear_qkv.bias"] = detail::qkv_rows_from_hf(
        detail::stack_rows({&b[0].view(), &b[1].view(), &b[2].view()}), c);
  }
  // The rest by name, with the shapes our model has.
  const auto shapes = model_parameter_shapes(c);
  const std::map<std::string, Shape> shape_of(shapes.begin(), shapes.end());
  for (int64_t i = -1; i < c.num_layers; ++i)
    for (const auto& [ours, theirs] : plain_names(i, c.bert_binary_head))
      m.tensors[ours] = get(theirs, shape_of.at(ours).dims());

  // A tensor we would drop (another head, an extra layer) means another architecture.
  for (const std::string& name : hf.names()) {
    if (used.count(name) != 0 || name.ends_with("position_ids")) continue;  // a buffer
    throw Error(ErrorKind::kUnsupported,
                "'" + hf_dir + "': tensor '" + name + "' has no place in a Megatron-BERT " +
                    (c.bert_binary_head ? "pre-training" : "masked-LM") + " model with " +
                    std::to_string(c.num_layers) + " layers (num_hidden_layers); this "
                    "architecture is not supported by --model-type megatron-bert");
  }
  for (const auto& [name, shape] : shapes) {
    auto it = m.tensors.find(name);
    SHARDLM_CHECK(it != m.tensors.end());
    SHARDLM_CHECK(it->second.view().shape() == shape);
  }
  SHARDLM_CHECK_EQ(m.tensors.size(), shapes.size());
  return m;
}

void write_hf_megatron_bert(const HfModel& m, const std::string& out_dir) {
  const model::TransformerConfig& c = m.config;
  SHARDLM_REQUIRE(c.bert(), ErrorKind::kUnsupported,
                  "the checkpoint holds a GPT model (model_type gpt); --to hf --model-type "
                  "megatron-bert exports BERT models (--model-type bert): use gpt2 or llama");
  SHARDLM_REQUIRE(c.num_experts == 0, ErrorKind::kUnsupported,
                  "the model has MoE layers (--num-experts " + std::to_string(c.num_experts) +
                      "); Hugging Face Megatron-BERT has dense MLPs only");
  SHARDLM_REQUIRE(c.add_bias_linear && !c.swiglu &&
                      c.normalization == model::Normalization::kLayerNorm &&
                      c.position_embedding == model::PositionEmbedding::kLearnedAbsolute &&
                      c.query_groups() == c.num_attention_heads &&
                      c.head_dim() * c.num_attention_heads == c.hidden_size,
                  ErrorKind::kUnsupported,
                  "this model is not a Megatron-BERT architecture (needs linear biases, a GELU "
                  "MLP, LayerNorm, learned absolute positions, multi-head attention with "
                  "hidden/heads head size: no --disable-bias-linear, --swiglu, --normalization "
                  "RMSNorm, --position-embedding-type rope/none, --group-query-attention or "
                  "--kv-channels); --to hf --model-type megatron-bert cannot express it");
  const int64_t C = c.hidden_size, V = c.vocab_size;
  const bool binary = c.has_binary_head();
  auto at = [&](const std::string& name) -> const Tensor& {
    return detail::parameter(m.tensors, name);
  };
  std::vector<std::pair<std::string, OwnedTensor>> out;
  auto put = [&](const std::string& name, OwnedTensor t) { out.emplace_back(name, std::move(t)); };
  put(kHfEmbed, resize_rows(at(kEmbed), V));
  // HF always adds a token-type row; without the binary head a zero table adds nothing.
  if (!binary) put(kHfTokentypes, OwnedTensor::zeros(DType::kF32, {2, C}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer_prefix(i), H = hf_layer(i) + "attention.self.";
    const OwnedTensor w = detail::qkv_rows_to_hf(at(L + "self_attention.linear_qkv.weight"), c);
    const OwnedTensor b = detail::qkv_rows_to_hf(at(L + "self_attention.linear_qkv.bias"), c);
    int64_t k = 0;
    for (const char* part : {"query", "key", "value"}) {
      put(H + part + ".weight", row_block(w, k * C, C));
      put(H + part + ".bias", row_block(b, k * C, C));
      ++k;
    }
  }
  for (int64_t i = -1; i < c.num_layers; ++i)
    for (const auto& [ours, theirs] : plain_names(i, binary)) put(theirs, copy_of(at(ours)));
  put("cls.predictions.bias", resize_rows(at("output_layer.bias"), V));
  if (c.untie_embeddings_and_output_weights)
    put("cls.predictions.decoder.weight", resize_rows(at(kOutput), V));

  // Keep what the source config.json said (token ids, dtype, ...); overwrite the architecture.
  nlohmann::json j = m.hf_config.is_object() ? m.hf_config : nlohmann::json::object();
  j["model_type"] = "megatron-bert";
  j["architectures"] = {binary ? "MegatronBertForPreTraining" : "MegatronBertForMaskedLM"};
  j["vocab_size"] = V;
  j["hidden_size"] = C;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["intermediate_size"] = c.ffn_size();
  j["hidden_act"] = "gelu_new";  // ShardLM's GELU (see the header)
  j["max_position_embeddings"] = c.max_positions();
  j["type_vocab_size"] = 2;
  j["layer_norm_eps"] = c.norm_epsilon;
  j["position_embedding_type"] = "absolute";
  j["tie_word_embeddings"] = !c.untie_embeddings_and_output_weights;
  j["is_decoder"] = false;
  j["hidden_dropout_prob"] = c.hidden_dropout;
  j["attention_probs_dropout_prob"] = c.attention_dropout;
  if (!j.contains("initializer_range")) j["initializer_range"] = c.init_method_std;
  if (!j.contains("torch_dtype") && !j.contains("dtype")) j["torch_dtype"] = "float32";
  detail::write_hf_dir(out_dir, out, j);
}

}  // namespace shardlm::ckpt
