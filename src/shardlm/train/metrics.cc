#include "shardlm/train/metrics.h"

namespace shardlm::train {

namespace {
bool is_embedding_like(const std::string& name) {
  return name == "embedding.word_embeddings.weight" ||
         name == "embedding.position_embeddings.weight" || name == "output_layer.weight";
}

// T5: the encoder's parameters (and the decoder's linear_kv, which reads the encoder output) run
// on T_e rows of a sample, the rest of the decoder and the output layer on T_d; attention counts
// encoder self (T_e²), decoder self (T_d²) and cross (T_d·T_e) scores.
double t5_flops_per_sample(const model::ParameterRegistry& registry,
                           const model::TransformerConfig& cfg) {
  double encoder_rows = 0, decoder_rows = 0;
  for (const model::Parameter& p : registry.parameters()) {
    if (is_embedding_like(p.spec.name)) continue;
    const double n = static_cast<double>(p.spec.global_shape.numel());
    const bool on_encoder = p.spec.name.rfind("encoder.", 0) == 0 ||
                            p.spec.name.find(".cross_attention.linear_kv.") != std::string::npos;
    (on_encoder ? encoder_rows : decoder_rows) += n;
  }
  const double V = static_cast<double>(cfg.padded_vocab_size());
  const double H = static_cast<double>(cfg.hidden_size);
  const double A = static_cast<double>(cfg.num_attention_heads * cfg.head_dim());
  const double TE = static_cast<double>(cfg.seq_length);
  const double TD = static_cast<double>(cfg.decoder_seq_length);
  const double LE = static_cast<double>(cfg.t5_encoder_layers());
  const double LD = static_cast<double>(cfg.num_layers);
  return 6.0 * (encoder_rows * TE + (decoder_rows + V * H) * TD) +
         12.0 * A * (LE * TE * TE + LD * TD * TD + LD * TD * TE);
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
  if (cfg.t5()) {
    out.flops_per_token = t5_flops_per_sample(registry, cfg) / S;
    return out;
  }
  out.flops_per_token =
      6.0 * (active + V * H) + 12.0 * L * A * S;
  return out;
}

std::string model_flops_formula(const model::TransformerConfig& cfg) {
  if (cfg.t5())
    return "flops/token = (6*(N_enc*Te + (N_dec + V*H)*Td) + 12*(heads*head_dim)*(Le*Te^2 + "
           "Ld*Td^2 + Ld*Td*Te)) / Te, N_enc counting the cross-attention's linear_kv, tokens "
           "= encoder tokens; MFU = flops/token * tokens/s / 989e12";
  return "flops/token = 6*(N_nonembedding + V*H) + 12*L*(heads*head_dim)*S; "
         "MFU = flops/token * tokens/s / 989e12";
}

}  // namespace shardlm::train
