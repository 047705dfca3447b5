// The model architecture as saved in a checkpoint's state ("model_config"), and the check run
// on load: every field that shapes the parameters or changes the math (sizes, GQA, kv_channels,
// biases, tying, SwiGLU, norm type and epsilon, position embedding, RoPE base / percent /
// layout) must equal the flags, else the error names the Megatron flag, the key and both values
// ("--rotary-base (rotary_base) is 500000.0 in the checkpoint but 10000.0 from the flags").
// Training-only fields (dropout, init std, sequence length) may differ: fine-tuning changes them.
// A key an older checkpoint lacks stands for the default it was saved with (learned_absolute
// positions, no RoPE), so old checkpoints still load.
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
