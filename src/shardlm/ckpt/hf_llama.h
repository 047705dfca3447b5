// Hugging Face Llama (LlamaForCausalLM) <-> ShardLM (Megatron names and layouts), both
// directions, for `shardlm convert --model-type llama` (DESIGN §7, issue 8).
//
// Name and layout mapping (HF prefix "model." optional on read, written on export; HF Linear
// weights are [out, in] like ours, so nothing is transposed):
//   embed_tokens.weight [V, C]        -> embedding.word_embeddings.weight [Vpad, C], rows >= V 0
//   layers.i.input_layernorm.weight   -> decoder.layers.i.self_attention.linear_qkv
//                                        .layer_norm_weight
//   layers.i.self_attn.{q,k,v}_proj   -> ...linear_qkv.weight [(NH + 2G) HS, C]: the rows of
//                                        [q_proj; k_proj; v_proj] regrouped per query group into
//                                        Megatron's [q_g (NH/G heads) | k_g | v_g]
//   layers.i.self_attn.o_proj         -> ...self_attention.linear_proj.weight
//   layers.i.post_attention_layernorm -> ...mlp.linear_fc1.layer_norm_weight
//   layers.i.mlp.{gate,up}_proj       -> ...mlp.linear_fc1.weight [2F, C] = [gate ; up] (our
//                                        SwiGLU computes silu(first half) * second half)
//   layers.i.mlp.down_proj            -> ...mlp.linear_fc2.weight
//   norm.weight                       -> decoder.final_layernorm.weight
//   lm_head.weight [V, C]             -> output_layer.weight [Vpad, C]; with tie_word_embeddings
//                                        none (checked equal to embed_tokens when present)
// Config: num_hidden_layers, hidden_size, intermediate_size -> ffn_hidden_size,
// num_attention_heads, num_key_value_heads -> num_query_groups, head_dim -> kv_channels,
// rms_norm_eps -> norm_epsilon, rope_theta (or rope_parameters.rope_theta, transformers >= 5)
// -> rotary_base, partial_rotary_factor -> rotary_percent, max_position_embeddings ->
// seq_length, vocab_size. RoPE is rotate-half (HF's layout), never interleaved; no biases;
// RMSNorm; SwiGLU. RoPE scaling (rope_scaling, or rope_parameters in transformers >= 5):
// rope_type llama3 -> --use-rope-scaling and its factors, linear ->
// --rotary-seq-len-interpolation-factor. Refused with kUnsupported naming the key: another
// rope_type (YaRN, dynamic, ...), attention_bias, mlp_bias, hidden_act other than silu, and any
// tensor the mapping does not use. Tensors may be F32/F16/BF16 on read (fp32 out);
// export writes F32.
//
//   HfModel m = read_hf_llama("llama_dir", 128);   // m.config, m.tensors (our names, fp32)
//   write_hf_llama(m, "out_dir");                   // config.json + model.safetensors
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/ckpt/hf_model.h"

namespace shardlm::ckpt {

// Reads config.json + model.safetensors (or model.safetensors.index.json and its shards). The
// vocabulary is padded to a multiple of divisible_by x tensor_parallel_size (as training pads it).
// Throws Error(kIo / kCorruptData / kUnsupported) naming the file, the key or the tensor.
HfModel read_hf_llama(const std::string& hf_dir, int64_t make_vocab_size_divisible_by = 128,
                      int64_t tensor_parallel_size = 1);

// Writes config.json + model.safetensors in Hugging Face's LlamaForCausalLM layout. Throws
// kUnsupported when the model is not a Llama architecture (e.g. interleaved RoPE, biases).
void write_hf_llama(const HfModel& model, const std::string& out_dir);

}  // namespace shardlm::ckpt
