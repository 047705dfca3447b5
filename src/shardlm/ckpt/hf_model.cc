#include "shardlm/ckpt/hf_model.h"

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/checkpoint_writer.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/ckpt/model_config_json.h"
#include "shardlm/model/families/gpt_model.h"

namespace shardlm::ckpt {

std::vector<std::pair<std::string, Shape>> model_parameter_shapes(
    const model::TransformerConfig& cfg) {
  model::ParameterRegistry reg;
  model::GPTModel(cfg).register_parameters(reg);
  std::vector<std::pair<std::string, Shape>> out;
  for (const model::Parameter& p : reg.parameters())
    out.emplace_back(p.spec.name, p.spec.global_shape);
  return out;
}

void write_model_checkpoint(const HfModel& m, const std::string& root, const std::string& source) {
  std::vector<ShardedTensor> shards;
  for (const auto& [name, shape] : model_parameter_shapes(m.config)) {
    auto it = m.tensors.find(name);
    SHARDLM_CHECK(it != m.tensors.end());
    const Tensor& t = it->second.view();
    SHARDLM_CHECK(t.shape() == shape);
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
  for (const auto& [name, shape] : model_parameter_shapes(m.config)) {
    OwnedTensor t = OwnedTensor::empty(DType::kF32, shape);
    // The vocabulary may have been padded for another TP size; the padded rows are never used.
    reader.read(ctx, {kModelPrefix + name, shape, ShardRegion::whole(shape), t.view(), true},
                {.allow_shape_mismatch = name == "embedding.word_embeddings.weight" ||
                                         name == "output_layer.weight"});
    m.tensors[name] = std::move(t);
  }
  return m;
}

}  // namespace shardlm::ckpt
