// Model FLOPs and MFU, with the one formula ShardLM and the PyTorch baseline
// (../shared/bench/torch_gpt_bench.py) both use, so their numbers compare directly:
//
//   flops_per_token = 6 * (N_nonembedding + V * H) + 12 * L * A * S
//
// N_nonembedding: every parameter except the word embedding (V×H), the learned position
// embedding and an untied output layer (all counted by global shape, once, whatever the
// layout); V*H: the output-layer matmul (tied or not); 12·L·A·S: attention scores and values,
// forward + backward, full (non-causal) S×S counted as Megatron/PaLM do, with A = heads × head
// dim (= H for GPT). MoE experts count k/E of their parameters in N_nonembedding (a token runs
// k of E experts; the router is counted whole). MFU = flops_per_token × tokens/s / peak (989e12:
// H100 SXM dense bf16).
//
// T5: tokens are encoder tokens (seq_length per sample, as the trainer counts them);
// flops_per_token is the sample's FLOPs / seq_length, the sample's FLOPs counting each parameter
// on the rows it runs on (the encoder's and the decoder's cross-attention linear_kv on T_e, the
// rest of the decoder and the output layer on T_d) and the attention scores of the encoder
// (T_e²), the decoder (T_d²) and the cross-attention (T_d·T_e) per layer.
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/model/parameter.h"
#include "shardlm/model/transformer_config.h"

namespace shardlm::train {

inline constexpr double kH100PeakBf16Flops = 989e12;

struct ModelFlops {
  int64_t parameters = 0;      // global, tied output layer counted once
  int64_t non_embedding = 0;   // N_nonembedding above
  double flops_per_token = 0;  // model FLOPs per trained token (forward + backward)
};

ModelFlops model_flops(const model::ParameterRegistry& registry,
                       const model::TransformerConfig& cfg);

// The formula above (cfg's family's) as one line, for logs and bench output.
std::string model_flops_formula(const model::TransformerConfig& cfg);

}  // namespace shardlm::train
