// The model architecture as saved in a checkpoint's state ("model_config"), and the check run
// on load: every field that shapes the parameters must equal the flags, else the error names the
// Megatron flag with both values (e.g. "--hidden-size: the checkpoint has 64, the flags say 32").
// Training-only fields (dropout, init std, sequence length) may differ: fine-tuning changes them.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "shardlm/model/transformer_config.h"

namespace shardlm::ckpt {

nlohmann::json model_config_to_json(const model::TransformerConfig& cfg);
// Fields absent from the JSON keep cfg's defaults.
model::TransformerConfig model_config_from_json(const nlohmann::json& j);

// Throws Error(kInvalidConfig) naming the checkpoint directory, the flag and both values for the
// first architecture field in which `saved` and `flags` differ. The vocabulary's padding may
// differ (the padded rows are never used).
void check_model_config(const nlohmann::json& saved, const model::TransformerConfig& flags,
                        const std::string& checkpoint_dir);

// A command line fragment that reproduces `cfg` with Megatron's flags ("--num-layers 2 ...").
std::string model_config_flags(const model::TransformerConfig& cfg);

}  // namespace shardlm::ckpt
