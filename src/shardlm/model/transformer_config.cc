#include "shardlm/model/transformer_config.h"

#include <algorithm>
#include <cmath>

#include "shardlm/base/error.h"

namespace shardlm::model {

namespace {
[[noreturn]] void bad(const std::string& message) {
  throw Error(ErrorKind::kInvalidConfig, message);
}
std::string s(int64_t v) { return std::to_string(v); }
}  // namespace

int64_t TransformerConfig::padded_vocab_size() const {
  const int64_t multiple = make_vocab_size_divisible_by * tensor_model_parallel_size;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

void TransformerConfig::validate() const {
  auto positive = [](const char* flag, int64_t v) {
    if (v <= 0) bad(std::string(flag) + " " + s(v) + " must be positive");
  };
  positive("--num-layers", num_layers);
  positive("--hidden-size", hidden_size);
  positive("--num-attention-heads", num_attention_heads);
  positive("--seq-length", seq_length);
  positive("--vocab-size", vocab_size);
  positive("--make-vocab-size-divisible-by", make_vocab_size_divisible_by);
  if (num_query_groups < 0) bad("--num-query-groups " + s(num_query_groups) + " must be positive");
  if (kv_channels < 0) bad("--kv-channels " + s(kv_channels) + " must be positive");
  if (ffn_hidden_size < 0) bad("--ffn-hidden-size " + s(ffn_hidden_size) + " must be positive");
  if (max_position_embeddings < 0)
    bad("--max-position-embeddings " + s(max_position_embeddings) + " must be positive");
  if (kv_channels == 0 && hidden_size % num_attention_heads != 0)
    bad("--hidden-size " + s(hidden_size) + " is not divisible by --num-attention-heads " +
        s(num_attention_heads) + "; choose a hidden size that is a multiple of the head count "
        "(or set --kv-channels)");
  if (num_attention_heads % query_groups() != 0)
    bad("--num-attention-heads " + s(num_attention_heads) +
        " is not divisible by --num-query-groups " + s(query_groups()) +
        "; the number of query groups must divide the number of heads");
  if (position_embedding == PositionEmbedding::kLearnedAbsolute && seq_length > max_positions())
    bad("--seq-length " + s(seq_length) + " exceeds --max-position-embeddings " +
        s(max_positions()) + "; raise --max-position-embeddings or shorten --seq-length");
  if (!(norm_epsilon > 0)) bad("--norm-epsilon must be positive");
  if (position_embedding == PositionEmbedding::kRope) {
    if (!(rotary_percent > 0 && rotary_percent <= 1))
      bad("--rotary-percent " + std::to_string(rotary_percent) + " must be in (0, 1]");
    if (const std::string why = ops::rope_frequencies_error(rope_frequencies()); !why.empty())
      bad(why);
    if (rotary_dim() < 2 || rotary_dim() % 2 != 0)
      bad("--rotary-percent " + std::to_string(rotary_percent) + " of head dim " +
          s(head_dim()) + " gives rotary dim " + s(rotary_dim()) +
          ", which must be even and >= 2 (RoPE rotates pairs); choose --rotary-percent so that "
          "kv_channels * rotary_percent is an even integer");
  }
  if (position_embedding != PositionEmbedding::kRope &&
      (use_rope_scaling || rotary_seq_len_interpolation_factor != 1.0))
    bad(std::string(use_rope_scaling ? "--use-rope-scaling"
                                     : "--rotary-seq-len-interpolation-factor") +
        " rescales RoPE, but the model has no RoPE; add --position-embedding-type rope or drop "
        "the flag");
  if (!(init_method_std > 0)) bad("--init-method-std must be positive");
  if (!(hidden_dropout >= 0 && hidden_dropout < 1))
    bad("--hidden-dropout " + std::to_string(hidden_dropout) + " must be in [0, 1)");
  if (!(attention_dropout >= 0 && attention_dropout < 1))
    bad("--attention-dropout " + std::to_string(attention_dropout) + " must be in [0, 1)");
  if (num_experts < 0) bad("--num-experts " + s(num_experts) + " must be positive (0: dense MLPs)");
  if (num_experts > 0) {
    // The CUDA router keeps one token's logits in a warp's registers.
    if (num_experts > 1024)
      bad("--num-experts " + s(num_experts) + " is more than the 1024 experts ShardLM's router "
          "supports; use at most 1024");
    if (moe_router_topk < 1 || moe_router_topk > num_experts)
      bad("--moe-router-topk " + s(moe_router_topk) + " must be between 1 and --num-experts " +
          s(num_experts));
    if (moe_ffn_hidden_size < 0)
      bad("--moe-ffn-hidden-size " + s(moe_ffn_hidden_size) + " must be positive");
    if (moe_layer_freq < 1)
      bad("--moe-layer-freq " + s(moe_layer_freq) + " must be >= 1 (1: every layer is MoE)");
    if (!(moe_aux_loss_coeff >= 0))
      bad("--moe-aux-loss-coeff " + std::to_string(moe_aux_loss_coeff) + " must be >= 0");
    if (!(moe_router_topk_scaling_factor >= 0))
      bad("--moe-router-topk-scaling-factor " + std::to_string(moe_router_topk_scaling_factor) +
          " must be > 0 (or unset: 1)");
    if (!(moe_z_loss_coeff >= 0))
      bad("--moe-z-loss-coeff " + std::to_string(moe_z_loss_coeff) + " must be >= 0");
    if (!(moe_expert_capacity_factor >= 0))
      bad("--moe-expert-capacity-factor " + std::to_string(moe_expert_capacity_factor) +
          " must be > 0 (or unset: dropless)");
  }
  if (t5()) validate_t5();
  validate_tensor_parallel(tensor_model_parallel_size, false);
  validate_fp8(tensor_model_parallel_size, 0);
}

void TransformerConfig::validate_t5() const {
  if (decoder_seq_length <= 0)
    bad("--decoder-seq-length " + s(decoder_seq_length) +
        " must be positive for --model-type t5 (Megatron's T5 uses 128 with --seq-length 512)");
  if (encoder_num_layers < 0)
    bad("--encoder-num-layers " + s(encoder_num_layers) + " must be positive");
  if (position_embedding == PositionEmbedding::kLearnedAbsolute &&
      decoder_seq_length > max_positions())
    bad("--decoder-seq-length " + s(decoder_seq_length) + " exceeds --max-position-embeddings " +
        s(max_positions()) + "; raise --max-position-embeddings (the encoder and the decoder "
        "share the position table)");
  if (query_groups() != num_attention_heads)
    bad("--num-query-groups " + s(query_groups()) + " with " + s(num_attention_heads) +
        " heads: T5's cross-attention does not support grouped-query attention (as in "
        "Megatron); drop --group-query-attention");
  if (num_experts > 0)
    bad("--num-experts " + s(num_experts) + ": mixture-of-experts layers are not supported for "
        "--model-type t5 yet; drop --num-experts");
  if (fp8.enabled())
    bad("--fp8-format: fp8 GEMMs are not supported for --model-type t5 yet; train it in bf16");
  if (untie_embeddings_and_output_weights)
    bad("--untie-embeddings-and-output-weights: T5's output layer is tied to the word embedding "
        "here (Megatron's default); drop the flag");
}

TransformerConfig TransformerConfig::stack_config(T5Stack stack) const {
  TransformerConfig c = *this;
  c.t5_stack = stack;
  c.max_position_embeddings = max_positions();  // one table for both stacks
  if (stack == T5Stack::kEncoder) {
    c.num_layers = t5_encoder_layers();
  } else if (stack == T5Stack::kDecoder) {
    c.seq_length = decoder_seq_length;
    c.encoder_seq_length = seq_length;
  }
  return c;
}

int64_t TransformerConfig::moe_expert_capacity(int64_t tokens) const {
  if (num_experts <= 0 || moe_expert_capacity_factor <= 0) return 0;
  const double rows = static_cast<double>(tokens * moe_router_topk) /
                      static_cast<double>(num_experts) * moe_expert_capacity_factor;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(rows)));
}

void TransformerConfig::validate_tensor_parallel(int64_t tp, bool sequence_parallel) const {
  if (tp <= 0) bad("--tensor-model-parallel-size " + s(tp) + " must be positive");
  if (tp == 1) return;
  const std::string tp_flag = "--tensor-model-parallel-size " + s(tp);
  if (num_attention_heads % tp != 0)
    bad("--num-attention-heads " + s(num_attention_heads) + " is not divisible by " + tp_flag +
        "; each tensor-parallel rank holds num_heads / TP whole heads: choose a head count that "
        "is a multiple of " + s(tp) + " or a TP size that divides " + s(num_attention_heads));
  // Groups are split (G divisible by TP: G/TP whole groups per rank) or replicated (TP
  // divisible by G: TP/G ranks share a group, each with a copy of its k/v; as Megatron Core).
  if (query_groups() >= tp && query_groups() % tp != 0)
    bad("--num-query-groups " + s(query_groups()) + " is not divisible by " + tp_flag +
        "; each tensor-parallel rank holds query_groups / TP whole groups: choose a group count "
        "that is a multiple of " + s(tp) + ", or a TP size that divides " + s(query_groups()));
  if (query_groups() < tp && tp % query_groups() != 0)
    bad("--num-query-groups " + s(query_groups()) + " does not divide " + tp_flag +
        "; with fewer query groups than tensor-parallel ranks each group is replicated on "
        "TP / query_groups ranks: choose a group count that divides " + s(tp) +
        " or a TP size that is a multiple of " + s(query_groups()));
  if (num_experts > 0 && moe_ffn_size() % tp != 0)
    bad("--moe-ffn-hidden-size " + s(moe_ffn_size()) + " is not divisible by " + tp_flag +
        "; every expert's MLP is split by columns across tensor-parallel ranks: choose a "
        "multiple of " + s(tp));
  if (ffn_size() % tp != 0)
    bad("--ffn-hidden-size " + s(ffn_size()) + " is not divisible by " + tp_flag +
        "; the MLP is split by columns across tensor-parallel ranks: choose a multiple of " +
        s(tp));
  if (padded_vocab_size() % tp != 0)
    bad("the padded vocabulary " + s(padded_vocab_size()) + " is not divisible by " + tp_flag +
        "; the model config must be built with tensor_model_parallel_size = " + s(tp) +
        " so the vocabulary is padded to a multiple of --make-vocab-size-divisible-by x TP");
  if (sequence_parallel && seq_length % tp != 0)
    bad("--seq-length " + s(seq_length) + " is not divisible by " + tp_flag +
        ", which --sequence-parallel needs (each rank holds seq_length / TP positions): choose a "
        "multiple of " + s(tp) + " or drop --sequence-parallel");
}

void TransformerConfig::validate_cp_all_to_all(int64_t tp, int64_t cp) const {
  if (cp <= 1) return;
  const std::string layout = "--num-query-groups " + s(query_groups()) +
                             " (--num-attention-heads " + s(num_attention_heads) +
                             ") with --tensor-model-parallel-size " + s(tp) +
                             " and --context-parallel-size " + s(cp);
  if (query_groups() < tp)
    bad("--cp-comm-type a2a: " + layout + " replicates each query group on " +
        s(tp / query_groups()) + " tensor-parallel ranks, so a rank holds one group and its " +
        "heads cannot be split over context-parallel ranks; use --cp-comm-type all_gather, or "
        "at least " + s(tp * cp) + " query groups");
  const int64_t per_rank = query_groups() / tp;
  if (per_rank % cp != 0)
    bad("--cp-comm-type a2a: " + layout + " gives each tensor-parallel rank " + s(per_rank) +
        " query groups, not divisible by " + s(cp) + " (each context-parallel rank attends "
        "with 1/CP of them over the whole sequence); use --cp-comm-type all_gather, a group "
        "count that is a multiple of TP x CP = " + s(tp * cp) + ", or a smaller TP or CP");
}

void TransformerConfig::validate_fp8(int64_t tp, int64_t cp) const {
  if (!fp8.enabled()) return;
  if (fp8.margin < 0 || fp8.margin > 64)
    bad("--fp8-margin " + s(fp8.margin) + " must be in [0, 64] (scales are divided by 2^margin)");
  if (fp8_first_last_layers_bf16 &&
      (fp8_layers_at_start_in_bf16 < 0 || fp8_layers_at_end_in_bf16 < 0 ||
       fp8_layers_at_start_in_bf16 + fp8_layers_at_end_in_bf16 >= num_layers))
    bad("--first-last-layers-bf16 with --num-layers-at-start-in-bf16 " +
        s(fp8_layers_at_start_in_bf16) + " and --num-layers-at-end-in-bf16 " +
        s(fp8_layers_at_end_in_bf16) + ": both must be >= 0 and leave at least one of the " +
        s(num_layers) + " layers in fp8; lower them or drop --fp8-format");
  if (tp <= 0 || num_attention_heads % tp != 0) return;  // reported by the TP checks
  const int64_t groups_local = query_groups() >= tp ? query_groups() / tp : 1;
  // cp == 0: the context-parallel size is not known yet (validate()); the tokens are checked
  // with the layout.
  const int64_t tokens = cp > 0 && seq_length % cp == 0 ? seq_length / cp : 16;
  const std::pair<std::string, int64_t> dims[] = {
      {"--hidden-size", hidden_size},
      {"the attention width per tensor-parallel rank (heads x kv-channels / TP)",
       num_attention_heads / tp * head_dim()},
      {"the fused QKV width per tensor-parallel rank ((heads / TP + 2 x query groups / TP) x "
       "kv-channels)",
       (num_attention_heads / tp + 2 * groups_local) * head_dim()},
      {"--ffn-hidden-size / TP", ffn_size() / tp},
      {"the tokens per sequence on a rank (--seq-length / context-parallel size)", tokens},
  };
  for (const auto& [what, n] : dims)
    if (n % 16 != 0)
      bad("--fp8-format needs every fp8 GEMM dimension to be a multiple of 16 (Hopper's fp8 "
          "tensor-core GEMMs; checked on every device): " + what + " is " + s(n) +
          "; choose sizes that make it a multiple of 16, or drop --fp8-format");
}

int64_t TransformerConfig::parameter_count() const {
  const int64_t C = hidden_size, F = ffn_size(), V = padded_vocab_size();
  const int64_t bias = add_bias_linear ? 1 : 0;
  const int64_t norm = normalization == Normalization::kLayerNorm ? 2 * C : C;
  const int64_t fc1_out = swiglu ? 2 * F : F;
  const int64_t attn_out = num_attention_heads * head_dim();
  const int64_t attention = norm + C * qkv_size() + bias * qkv_size() + attn_out * C + bias * C;
  const int64_t dense = norm + C * fc1_out + bias * fc1_out + F * C + bias * C;
  const int64_t FE = moe_ffn_size(), fc1_e = swiglu ? 2 * FE : FE;
  const int64_t moe =
      norm + C * num_experts + num_experts * (C * fc1_e + bias * fc1_e + FE * C + bias * C);
  const int64_t moe_layers = num_moe_layers();
  int64_t total = num_layers * attention + (num_layers - moe_layers) * dense + moe_layers * moe +
                  norm + V * C;
  if (position_embedding == PositionEmbedding::kLearnedAbsolute) total += max_positions() * C;
  if (untie_embeddings_and_output_weights) total += V * C;
  if (bert()) {
    total += num_tokentypes() * C + (C * C + C + norm) + V;  // types, LM head, output bias
    if (has_binary_head()) total += (C * C + C) + (2 * C + 2);  // pooler, binary head
  }
  if (t5()) {
    // The encoder's layers and final norm; each decoder layer's cross-attention (its norm,
    // linear_q, linear_kv, linear_proj); the output-layer bias.
    const int64_t cross = norm + C * attn_out + bias * attn_out + C * 2 * attn_out +
                          bias * 2 * attn_out + attn_out * C + bias * C;
    total += t5_encoder_layers() * (attention + dense) + norm + num_layers * cross + V;
  }
  return total;
}

}  // namespace shardlm::model
