// TransformerConfig: the architecture of a GPT-style decoder, as Megatron's TransformerConfig
// plus the language-model fields (vocab, positions). Validated when the model is built:
// validate() throws Error(kInvalidConfig) naming the Megatron flag, the value and the fix.
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/model/fp8_recipe.h"
#include "shardlm/ops/rope_frequencies.h"

namespace shardlm::model {

enum class Normalization { kLayerNorm, kRMSNorm };
// kRope: rotary position embedding on q and k inside every attention layer (no
// position_embeddings parameter, as Megatron's --position-embedding-type rope).
enum class PositionEmbedding { kLearnedAbsolute, kNone, kRope };
// Megatron's pretrain_gpt / pretrain_bert / pretrain_t5. kBert: bidirectional attention with
// BERT's padding mask, token-type embeddings (with the binary head), the LM head's transform
// (dense → GELU → LayerNorm) and output-layer bias, and the pooler + sentence-order head
// (bert_binary_head). kT5: an encoder stack (bidirectional, the encoder's padding mask) and a
// decoder stack (causal, plus cross-attention to the encoder output) sharing the embedding; the
// output layer (tied, with a bias) reads the decoder.
enum class ModelFamily { kGPT, kBert, kT5 };
// T5: the stack a layer config describes (TransformerConfig::stack_config). kNone: GPT / BERT
// layers, or T5's model-level config.
enum class T5Stack { kNone, kEncoder, kDecoder };

struct TransformerConfig {
  int64_t num_layers = 2;
  int64_t hidden_size = 64;             // C
  int64_t num_attention_heads = 4;      // NH
  int64_t num_query_groups = 0;         // G; 0 means = NH (plain multi-head attention)
  int64_t kv_channels = 0;              // HS; 0 means hidden / heads
  int64_t ffn_hidden_size = 0;          // F; 0 means 4 * hidden
  int64_t seq_length = 64;              // T
  int64_t max_position_embeddings = 0;  // 0 means = seq_length
  int64_t vocab_size = 0;               // unpadded (tokenizer) vocab
  int64_t make_vocab_size_divisible_by = 128;
  int64_t tensor_model_parallel_size = 1;  // used for vocab padding (multiple of div × TP)
  bool untie_embeddings_and_output_weights = false;
  bool add_bias_linear = true;
  bool swiglu = false;
  Normalization normalization = Normalization::kLayerNorm;
  PositionEmbedding position_embedding = PositionEmbedding::kLearnedAbsolute;
  double norm_epsilon = 1e-5;
  // RoPE (position_embedding == kRope): rotate the first rotary_dim() dims of each q/k head,
  // inv_freq_i = rotary_base^(-2i / rotary_dim()); rotate-half pairs (Hugging Face Llama)
  // unless rotary_interleaved (pairs 2i, 2i+1).
  double rotary_base = 10000.0;
  double rotary_percent = 1.0;
  bool rotary_interleaved = false;
  // Long-context RoPE (ops/rope_frequencies.h): Llama 3.x's rescaling of the low frequencies
  // (--use-rope-scaling; factor, low/high frequency factors and original context as Llama 3.x
  // configs give them), and linear position interpolation.
  bool use_rope_scaling = false;
  double rope_scaling_factor = 8.0;
  double rope_scaling_low_freq_factor = 1.0;
  double rope_scaling_high_freq_factor = 4.0;
  double rope_scaling_original_max_positions = 8192;
  double rotary_seq_len_interpolation_factor = 1.0;
  // Mixture of experts (Megatron's --num-experts ...; 0: dense MLPs). Layer i is an MoE layer
  // when i % moe_layer_freq == 0 (--moe-layer-freq N: one MoE layer every N layers).
  int64_t num_experts = 0;
  int64_t moe_router_topk = 2;
  int64_t moe_ffn_hidden_size = 0;  // 0: ffn_size()
  int64_t moe_layer_freq = 1;
  double moe_aux_loss_coeff = 0.0;  // switch load-balancing loss; 0: none
  bool moe_aux_loss_enabled = true; // --moe-router-load-balancing-type aux_loss (none: false)
  bool moe_seq_aux_loss = false;    // --moe-router-load-balancing-type seq_aux_loss
  bool moe_router_pre_softmax = false;
  double moe_router_topk_scaling_factor = 0.0;  // > 0: the routing weights times it (0: none)
  // Megatron's token dropping (--moe-expert-capacity-factor F > 0): each expert takes at most
  // moe_expert_capacity(N) of a micro-batch's N·k routed rows on a rank; the rest are dropped
  // (lowest router weight first, or with --moe-token-drop-policy position the latest tokens).
  // 0: dropless.
  double moe_expert_capacity_factor = 0.0;
  // Megatron's router z-loss weight (--moe-z-loss-coeff): coeff · mean_n logsumexp(logits_n)²
  // joins the objective as the load-balancing loss does; 0: none.
  double moe_z_loss_coeff = 0.0;
  bool moe_token_drop_by_position = false;
  // fp8 GEMMs in the transformer layers' linears (--fp8-format; model/fp8_linear.h), except the
  // first and last layers kept in 16-bit (--first-last-layers-bf16 with
  // --num-layers-at-start-in-bf16 / --num-layers-at-end-in-bf16). The embedding, the output
  // layer, attention and the MoE experts stay 16-bit, as in Megatron with Transformer Engine.
  // A training choice, not part of the architecture: checkpoints do not record it.
  Fp8Recipe fp8{};
  bool fp8_first_last_layers_bf16 = false;
  int64_t fp8_layers_at_start_in_bf16 = 1;  // with fp8_first_last_layers_bf16 only
  int64_t fp8_layers_at_end_in_bf16 = 1;
  bool fp8_layer(int64_t layer) const {
    if (!fp8.enabled()) return false;
    if (!fp8_first_last_layers_bf16) return true;
    return layer >= fp8_layers_at_start_in_bf16 && layer < num_layers - fp8_layers_at_end_in_bf16;
  }
  ModelFamily family = ModelFamily::kGPT;
  bool bert_binary_head = true;  // --bert-no-binary-head: false (then no token types either)
  // T5, following Megatron's flags: seq_length is the encoder's (--seq-length /
  // --encoder-seq-length), decoder_seq_length the decoder's (--decoder-seq-length), num_layers
  // the decoder's and encoder_num_layers the encoder's (--encoder-num-layers; 0: num_layers).
  // The layers of a stack are built from stack_config(stack): its own seq_length and
  // num_layers, t5_stack set, and for the decoder encoder_seq_length (the cross-attention keys).
  int64_t decoder_seq_length = 0;
  int64_t encoder_num_layers = 0;
  T5Stack t5_stack = T5Stack::kNone;
  int64_t encoder_seq_length = 0;  // decoder stack copies only
  double init_method_std = 0.02;
  double hidden_dropout = 0.1;
  double attention_dropout = 0.1;

  bool bert() const { return family == ModelFamily::kBert; }
  bool t5() const { return family == ModelFamily::kT5; }
  // Self-attention mask of the layers built from this config: BERT and T5's encoder are
  // bidirectional (with their padding), GPT and T5's decoder causal.
  bool causal() const { return !bert() && t5_stack != T5Stack::kEncoder; }
  // Decoder layers of T5 attend to the encoder output after their self-attention.
  bool cross_attention() const { return t5_stack == T5Stack::kDecoder; }
  int64_t t5_encoder_layers() const { return encoder_num_layers > 0 ? encoder_num_layers : num_layers; }
  // T5: the config the layers of `stack` are built from (see decoder_seq_length).
  TransformerConfig stack_config(T5Stack stack) const;
  // Megatron's pretrain_bert: 2 token types with the binary head, else none.
  int64_t num_tokentypes() const { return bert() && bert_binary_head ? 2 : 0; }
  bool has_binary_head() const { return bert() && bert_binary_head; }
  int64_t query_groups() const { return num_query_groups > 0 ? num_query_groups : num_attention_heads; }
  int64_t head_dim() const { return kv_channels > 0 ? kv_channels : hidden_size / num_attention_heads; }
  int64_t ffn_size() const { return ffn_hidden_size > 0 ? ffn_hidden_size : 4 * hidden_size; }
  int64_t moe_ffn_size() const { return moe_ffn_hidden_size > 0 ? moe_ffn_hidden_size : ffn_size(); }
  bool is_moe_layer(int64_t layer) const {
    return num_experts > 0 && layer % moe_layer_freq == 0;
  }
  // Megatron's get_capacity: ceil(N·k / E · factor) rows per expert for N tokens; 0 (no cap)
  // when dropless.
  int64_t moe_expert_capacity(int64_t tokens) const;
  // The load-balancing loss's weight in effect.
  double moe_aux_coeff() const { return moe_aux_loss_enabled ? moe_aux_loss_coeff : 0.0; }
  int64_t num_moe_layers() const {
    return num_experts > 0 ? (num_layers + moe_layer_freq - 1) / moe_layer_freq : 0;
  }
  int64_t max_positions() const {
    return max_position_embeddings > 0 ? max_position_embeddings : seq_length;
  }
  // Megatron's _vocab_size_with_padding: round up to a multiple of divisible_by × TP.
  int64_t padded_vocab_size() const;
  // Megatron's RotaryEmbedding: dim = int(kv_channels * rotary_percent).
  int64_t rotary_dim() const {
    return static_cast<int64_t>(static_cast<double>(head_dim()) * rotary_percent);
  }
  ops::RopeFrequencies rope_frequencies() const {
    return {rotary_base,
            use_rope_scaling,
            rope_scaling_factor,
            rope_scaling_low_freq_factor,
            rope_scaling_high_freq_factor,
            rope_scaling_original_max_positions,
            rotary_seq_len_interpolation_factor};
  }
  int64_t qkv_size() const { return (num_attention_heads + 2 * query_groups()) * head_dim(); }

  void validate() const;
  // The tensor-parallel part of validate(): heads, query groups, ffn and vocab must split
  // evenly over tp_size ranks (and the sequence too with sequence parallelism); throws
  // Error(kInvalidConfig) naming the flags, the numbers and a fix. validate() runs it with
  // (tensor_model_parallel_size, false); GPTModel with its TP group.
  void validate_tensor_parallel(int64_t tp_size, bool sequence_parallel) const;
  // The fp8 part (a no-op without --fp8-format): every fp8 GEMM dimension a multiple of 16 on
  // tp_size tensor- and cp_size context-parallel ranks (Hopper's fp8 GEMMs need it; checked on
  // the CPU too, so a layout that trains there trains on the GPU), the margin, and at least
  // one layer left in fp8. validate() runs it with (tensor_model_parallel_size, 0): cp_size 0
  // skips the tokens, which need the layout.
  void validate_fp8(int64_t tp_size, int64_t cp_size) const;
  // --cp-comm-type a2a (model/context_parallel.h): each of cp_size context-parallel ranks runs
  // attention on 1/CP of its tensor-parallel rank's query groups, so query_groups / TP must be
  // a multiple of CP (replicated groups, fewer than TP ranks, cannot be split further). Throws
  // Error(kInvalidConfig) naming the flags, the numbers and a fix; a no-op at CP = 1.
  void validate_cp_all_to_all(int64_t tp_size, int64_t cp_size) const;
  // The T5 part of validate(): lengths, and what T5 does not support (grouped-query
  // cross-attention, as Megatron; MoE, fp8 and an untied output layer, not yet).
  void validate_t5() const;
  // Total parameter count (embedding and output layer counted once when tied).
  int64_t parameter_count() const;
};

}  // namespace shardlm::model
