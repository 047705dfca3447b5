// A whole model as `shardlm convert` moves it between formats: the architecture plus every
// parameter as a global fp32 tensor under its ShardLM (Megatron) name. The Hugging Face readers
// and writers (hf_gpt2.h, hf_llama.h, hf_bert.h) produce and consume it; this file holds the
// ShardLM side: a model-only checkpoint (iteration 0, no optimizer state) and its reverse.
//
//   HfModel m = read_hf_llama("llama_dir");
//   write_model_checkpoint(m, "ckpt", "hf llama llama_dir");  // train --load ckpt --finetune
//   HfModel back = read_model_checkpoint("ckpt");              // any saved TP/DP layout
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ckpt {

struct HfModel {
  model::TransformerConfig config;
  std::map<std::string, OwnedTensor> tensors;  // ShardLM names, global fp32 tensors
  nlohmann::json hf_config;                    // the config.json read (kept for export)
  // What the import approximated (e.g. erf GELU run as the tanh form): one sentence each,
  // printed by `shardlm convert`; not saved in the checkpoint.
  std::vector<std::string> notes;
};

// The model's parameters (names and global shapes) in registration order.
std::vector<std::pair<std::string, Shape>> model_parameter_shapes(
    const model::TransformerConfig& cfg);

// A model-only ShardLM checkpoint (iteration 0, no optimizer state) of `model` under root.
void write_model_checkpoint(const HfModel& model, const std::string& root,
                            const std::string& source);
// Reads every parameter of a ShardLM checkpoint (any saved layout) as whole fp32 tensors.
// iteration < 0: the latest.
HfModel read_model_checkpoint(const std::string& root, int64_t iteration = -1);

}  // namespace shardlm::ckpt
