#include "shardlm/ckpt/hf_gpt2.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/checkpoint_writer.h"
#include "shardlm/ckpt/detail/convert.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/ckpt/model_config_json.h"
#include "shardlm/ckpt/safetensors.h"
#include "shardlm/model/families/gpt_model.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

namespace {
nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorKind::kIo, "cannot read '" + path.string() + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded())
    throw Error(ErrorKind::kCorruptData, "'" + path.string() + "' is not valid JSON");
  return j;
}

// Every tensor of the HF checkpoint, by name, with the file it lives in.
class HfTensors {
 public:
  explicit HfTensors(const fs::path& dir) {
    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(single)) {
      add_file(single);
    } else if (fs::exists(index)) {
      const nlohmann::json j = read_json(index);
      SHARDLM_REQUIRE(j.contains("weight_map") && j["weight_map"].is_object(),
                      ErrorKind::kCorruptData, "'" + index.string() + "' has no weight_map");
      std::map<std::string, bool> files;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
        files[it.value().get<std::string>()] = true;
      for (const auto& [f, _] : files) add_file(dir / f);
    } else {
      throw Error(ErrorKind::kIo, "'" + dir.string() +
                                      "' has neither model.safetensors nor "
                                      "model.safetensors.index.json (save the model with "
                                      "save_pretrained(..., safe_serialization=True))");
    }
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  // The tensor as fp32 [shape], checking the shape.
  OwnedTensor get(const std::string& name, const std::vector<int64_t>& shape) const {
    auto it = where_.find(name);
    if (it == where_.end())
      throw Error(ErrorKind::kCorruptData,
                  "Hugging Face checkpoint lacks tensor '" + name + "' (expected shape " +
                      Shape(shape).to_string() + "); is it a GPT-2 model?");
    const SafetensorsEntry& e = it->second->entry(name);
    SHARDLM_REQUIRE(e.shape == shape, ErrorKind::kCorruptData,
                    "'" + it->second->path() + "': tensor '" + name + "' has shape " +
                        Shape(e.shape).to_string() + " but config.json implies " +
                        Shape(shape).to_string());
    OwnedTensor out = OwnedTensor::empty(DType::kF32, Shape(shape));
    detail::convert_elements(out.view().raw(), DType::kF32, e.bytes.data(), e.dtype, e.numel());
    return out;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [n, _] : where_) out.push_back(n);
    return out;
  }

 private:
  void add_file(const fs::path& path) {
    files_.push_back(std::make_unique<SafetensorsReader>(path.string()));
    for (const auto& [name, _] : files_.back()->entries()) where_[name] = files_.back().get();
  }
  std::vector<std::unique_ptr<SafetensorsReader>> files_;
  std::map<std::string, const SafetensorsReader*> where_;
};

OwnedTensor transpose(const Tensor& t) {  // [R, K] -> [K, R]
  const int64_t R = t.size(0), K = t.size(1);
  OwnedTensor out = OwnedTensor::empty(DType::kF32, {K, R});
  const float* s = t.data<float>();
  float* d = out.view().data<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) d[k * R + r] = s[r * K + k];
  return out;
}

// Megatron row r of the fused QKV output <-> HF c_attn output column (NH heads, G groups).
int64_t hf_qkv_column(int64_t r, const model::TransformerConfig& c) {
  const int64_t HS = c.head_dim(), NH = c.num_attention_heads, G = c.query_groups();
  const int64_t per_group = (NH / G + 2) * HS;
  const int64_t g = r / per_group, w = r % per_group;
  const int64_t q_rows = NH / G * HS;
  if (w < q_rows) return g * q_rows + w;                     // query head g*NH/G + w/HS
  if (w < q_rows + HS) return NH * HS + g * HS + (w - q_rows);  // key of group g
  return NH * HS + G * HS + g * HS + (w - q_rows - HS);         // value of group g
}

std::string layer(int64_t i) { return "decoder.layers." + std::to_string(i) + "."; }
std::string hf_layer(int64_t i) { return "h." + std::to_string(i) + "."; }

// The names of our parameters, in registration order, with global shapes.
std::vector<std::pair<std::string, Shape>> parameter_list(const model::TransformerConfig& cfg) {
  model::ParameterRegistry reg;
  model::GPTModel(cfg).register_parameters(reg);
  std::vector<std::pair<std::string, Shape>> out;
  for (const model::Parameter& p : reg.parameters()) out.emplace_back(p.spec.name, p.spec.global_shape);
  return out;
}
}  // namespace

HfModel read_hf_gpt2(const std::string& hf_dir, int64_t divisible_by) {
  const fs::path dir(hf_dir);
  HfModel m;
  m.hf_config = read_json(dir / "config.json");
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
  c.norm_epsilon = h.value("layer_norm_epsilon", 1e-5);
  c.hidden_dropout = h.value("resid_pdrop", 0.1);
  c.attention_dropout = h.value("attn_pdrop", 0.1);
  c.validate();

  HfTensors hf(dir);
  std::string prefix = hf.contains("transformer.wte.weight") ? "transformer." : "";
  const int64_t C = c.hidden_size, V = c.vocab_size, Vp = c.padded_vocab_size(),
                F = c.ffn_size(), P = c.max_positions();
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    return hf.get(prefix + name, shape);
  };
  {  // word embeddings, padded
    OwnedTensor wte = get("wte.weight", {V, C});
    OwnedTensor padded = OwnedTensor::zeros(DType::kF32, {Vp, C});
    std::memcpy(padded.view().raw(), wte.view().raw(), wte.view().nbytes());
    if (hf.contains("lm_head.weight")) {
      OwnedTensor head = hf.get("lm_head.weight", {V, C});
      SHARDLM_REQUIRE(std::memcmp(head.view().raw(), wte.view().raw(), wte.view().nbytes()) == 0,
                      ErrorKind::kUnsupported,
                      "lm_head.weight differs from wte.weight: untied GPT-2 output layers are "
                      "not supported by this converter");
    }
    m.tensors["embedding.word_embeddings.weight"] = std::move(padded);
  }
  m.tensors["embedding.position_embeddings.weight"] = get("wpe.weight", {P, C});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer(i), H = hf_layer(i);
    m.tensors[L + "self_attention.linear_qkv.layer_norm_weight"] = get(H + "ln_1.weight", {C});
    m.tensors[L + "self_attention.linear_qkv.layer_norm_bias"] = get(H + "ln_1.bias", {C});
    {
      const int64_t R = c.qkv_size();
      OwnedTensor w = get(H + "attn.c_attn.weight", {C, R});  // [in, out]
      OwnedTensor b = get(H + "attn.c_attn.bias", {R});
      OwnedTensor qkv_w = OwnedTensor::empty(DType::kF32, {R, C});
      OwnedTensor qkv_b = OwnedTensor::empty(DType::kF32, {R});
      for (int64_t r = 0; r < R; ++r) {
        const int64_t col = hf_qkv_column(r, c);
        for (int64_t k = 0; k < C; ++k)
          qkv_w.view().data<float>()[r * C + k] = w.view().data<float>()[k * R + col];
        qkv_b.view().data<float>()[r] = b.view().data<float>()[col];
      }
      m.tensors[L + "self_attention.linear_qkv.weight"] = std::move(qkv_w);
      m.tensors[L + "self_attention.linear_qkv.bias"] = std::move(qkv_b);
    }
    m.tensors[L + "self_attention.linear_proj.weight"] =
        transpose(get(H + "attn.c_proj.weight", {C, C}).view());
    m.tensors[L + "self_attention.linear_proj.bias"] = get(H + "attn.c_proj.bias", {C});
    m.tensors[L + "mlp.linear_fc1.layer_norm_weight"] = get(H + "ln_2.weight", {C});
    m.tensors[L + "mlp.linear_fc1.layer_norm_bias"] = get(H + "ln_2.bias", {C});
    m.tensors[L + "mlp.linear_fc1.weight"] = transpose(get(H + "mlp.c_fc.weight", {C, F}).view());
    m.tensors[L + "mlp.linear_fc1.bias"] = get(H + "mlp.c_fc.bias", {F});
    m.tensors[L + "mlp.linear_fc2.weight"] = transpose(get(H + "mlp.c_proj.weight", {F, C}).view());
    m.tensors[L + "mlp.linear_fc2.bias"] = get(H + "mlp.c_proj.bias", {C});
  }
  m.tensors["decoder.final_layernorm.weight"] = get("ln_f.weight", {C});
  m.tensors["decoder.final_layernorm.bias"] = get("ln_f.bias", {C});
  // Every parameter of the model is there, with its shape.
  for (const auto& [name, shape] : parameter_list(c)) {
    auto it = m.tensors.find(name);
    SHARDLM_CHECK(it != m.tensors.end());
    SHARDLM_CHECK(it->second.view().shape() == shape);
  }
  return m;
}

void write_hf_gpt2(const HfModel& m, const std::string& out_dir) {
  const model::TransformerConfig& c = m.config;
  SHARDLM_REQUIRE(!c.untie_embeddings_and_output_weights && c.add_bias_linear && !c.swiglu &&
                      c.normalization == model::Normalization::kLayerNorm &&
                      c.position_embedding == model::PositionEmbedding::kLearnedAbsolute &&
                      c.query_groups() == c.num_attention_heads &&
                      c.head_dim() * c.num_attention_heads == c.hidden_size,
                  ErrorKind::kUnsupported,
                  "this model is not a GPT-2 architecture (tied embeddings, biases, GELU MLP, "
                  "LayerNorm, learned positions, multi-head attention with hidden/heads head "
                  "size); --to hf --model-type gpt2 cannot express it");
  const int64_t C = c.hidden_size, V = c.vocab_size, F = c.ffn_size();
  auto at = [&](const std::string& name) -> const Tensor& {
    auto it = m.tensors.find(name);
    SHARDLM_REQUIRE(it != m.tensors.end(), ErrorKind::kCorruptData,
                    "the checkpoint lacks parameter '" + name + "'");
    return it->second.view();
  };
  std::vector<std::pair<std::string, OwnedTensor>> out;
  auto put = [&](const std::string& name, OwnedTensor t) { out.emplace_back(name, std::move(t)); };
  auto copy_of = [](const Tensor& t) {
    OwnedTensor o = OwnedTensor::empty(DType::kF32, t.shape());
    std::memcpy(o.view().raw(), t.raw(), t.nbytes());
    return o;
  };
  {
    const Tensor& wte = at("embedding.word_embeddings.weight");
    OwnedTensor unpadded = OwnedTensor::empty(DType::kF32, {V, C});
    std::memcpy(unpadded.view().raw(), wte.raw(), static_cast<size_t>(V * C) * 4);
    put("transformer.wte.weight", std::move(unpadded));
  }
  put("transformer.wpe.weight", copy_of(at("embedding.position_embeddings.weight")));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = layer(i), H = "transformer." + hf_layer(i);
    put(H + "ln_1.weight", copy_of(at(L + "self_attention.linear_qkv.layer_norm_weight")));
    put(H + "ln_1.bias", copy_of(at(L + "self_attention.linear_qkv.layer_norm_bias")));
    {
      const int64_t R = c.qkv_size();
      const Tensor& qw = at(L + "self_attention.linear_qkv.weight");
      const Tensor& qb = at(L + "self_attention.linear_qkv.bias");
      OwnedTensor w = OwnedTensor::empty(DType::kF32, {C, R});
      OwnedTensor b = OwnedTensor::empty(DType::kF32, {R});
      for (int64_t r = 0; r < R; ++r) {
        const int64_t col = hf_qkv_column(r, c);
        for (int64_t k = 0; k < C; ++k)
          w.view().data<float>()[k * R + col] = qw.data<float>()[r * C + k];
        b.view().data<float>()[col] = qb.data<float>()[r];
      }
      put(H + "attn.c_attn.weight", std::move(w));
      put(H + "attn.c_attn.bias", std::move(b));
    }
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
  (void)F;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create '" + out_dir + "': " + ec.message());
  SafetensorsWriter writer;
  for (const auto& [name, t] : out) {
    const auto* p = static_cast<const std::byte*>(t.view().raw());
    writer.add(name, DType::kF32, t.view().shape().dims(), {p, t.view().nbytes()});
  }
  writer.set_metadata("format", "pt");
  writer.write((fs::path(out_dir) / "model.safetensors").string());

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
  write_file_atomically((fs::path(out_dir) / "config.json").string(), j.dump(2) + "\n");
}

void write_model_checkpoint(const HfModel& m, const std::string& root, const std::string& source) {
  std::vector<ShardedTensor> shards;
  for (const auto& [name, shape] : parameter_list(m.config)) {
    const Tensor& t = m.tensors.at(name).view();
    shards.push_back({kModelPrefix + name, shape, ShardRegion::whole(shape), t, true});
  }
  const nlohmann::json state = {
      {"iteration", 0},
      {"consumed_samples", 0},
      {"skipped_iterations", 0},
      {"nan_iterations", 0},
      {"data_sampler", {{"consumed_samples", 0}, {"eval_cursor", 0}}},
      {"rng", nullptr},
      {"optimizer", {{"saved", false}, {"steps", 0}}},
      {"lr_scheduler", nullptr},
      {"loss_scaler", nullptr},
      {"model_config", model_config_to_json(m.config)},
      {"hf_config", m.hf_config},
      {"converted_from", source},
  };
  DeviceContext ctx = DeviceContext::cpu();
  CheckpointWriter(nullptr).save(ctx, root, 0, shards, state);
}

HfModel read_model_checkpoint(const std::string& root, int64_t iteration) {
  if (iteration < 0) {
    const auto latest = CheckpointReader::latest_iteration(root);
    SHARDLM_REQUIRE(latest.has_value(), ErrorKind::kIo,
                    "'" + root + "' holds no checkpoint (" + kLatestFileName + " is missing)");
    iteration = *latest;
  }
  CheckpointReader reader(root, iteration);
  HfModel m;
  m.config = model_config_from_json(reader.state().at("model_config"));
  if (reader.state().contains("hf_config")) m.hf_config = reader.state()["hf_config"];
  DeviceContext ctx = DeviceContext::cpu();
  for (const auto& [name, shape] : parameter_list(m.config)) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, shape);
    reader.read(ctx, {kModelPrefix + name, shape, ShardRegion::whole(shape), t.view(), true},
                {.allow_shape_mismatch = name == "embedding.word_embeddings.weight" ||
                                         name == "output_layer.weight"});
    m.tensors[name] = std::move(t);
  }
  return m;
}

}  // namespace shardlm::ckpt
