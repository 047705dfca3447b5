#include "shardlm/train/metrics.h"

namespace shardlm::train {

namespace {
bool is_embedding_like(const std::string& name) {
  return name == "embedding.word_embeddings.weight" ||
         name == "embedding.position_embeddings.weight" || name == "output_layer.weight";
}
}  // namespace

ModelFlops model_flops(const model::ParameterRegistry& registry,
                       const model::TransformerConfig& cfg) {
  ModelFlops out;
  double active = 0;  // non-embedding parameters a token passes through
  for (const model::Parameter& p : registry.parameters()) {
    const int64_t n = p.spec.global_shape.numel();
    out.parameters += n;
    if (is_embedding_like(p.spec.name)) continue;
    out.non_embedding += n;
    // A token runs k of a layer's E experts.
    const bool expert = p.spec.name.find(".mlp.experts.") != std::string::npos;
    active += expert ? static_cast<double>(n) * static_cast<double>(cfg.moe_router_topk) /
                           static_cast<double>(cfg.num_experts)
                     : static_cast<double>(n);
  }
  const double V = static_cast<double>(cfg.padded_vocab_size());
  const double H = static_cast<double>(cfg.hidden_size);
  const double L = static_cast<double>(cfg.num_layers);
  const double A = static_cast<double>(cfg.num_attention_heads * cfg.head_dim());
  const double S = static_cast<double>(cfg.seq_length);
  out.flops_per_token =
      6.0 * (active + V * H) + 12.0 * L * A * S;
  return out;
}

std::string model_flops_formula() {
  return "flops/token = 6*(N_nonembedding + V*H) + 12*L*(heads*head_dim)*S; "
         "MFU = flops/token * tokens/s / 989e12";
}

}  // namespace shardlm::train
