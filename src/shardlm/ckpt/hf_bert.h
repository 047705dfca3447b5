// Hugging Face Megatron-BERT (model_type "megatron-bert": MegatronBertForPreTraining, or
// MegatronBertForMaskedLM without the binary head) <-> ShardLM's BERT (ModelFamily::kBert,
// Megatron Core's BertModel names), both directions, for `shardlm convert --model-type
// megatron-bert`. HF's MegatronBert is pre-LN like Megatron (no embedding LayerNorm), unlike
// HF's plain BERT. HF Linear weights are [out, in] like ours: nothing is transposed.
//
// Name and layout mapping (HF prefix "bert." on the encoder; H = bert.encoder.layer.i.):
//   bert.embeddings.word_embeddings.weight [V, C]  -> embedding.word_embeddings.weight [Vpad, C]
//                                                     (rows >= V zero, as Megatron pads)
//   bert.embeddings.position_embeddings.weight     -> embedding.position_embeddings.weight
//   bert.embeddings.token_type_embeddings [2, C]   -> embedding.tokentype_embeddings.weight
//                                                     (binary head only; without it HF's table
//                                                     must be zero and is written as zeros)
//   H attention.ln.{weight,bias}                   -> decoder.layers.i.self_attention.linear_qkv
//                                                     .layer_norm_{weight,bias}
//   H attention.self.{query,key,value}.{w,b}       -> ...linear_qkv.{weight,bias}: the rows of
//                                                     [query; key; value] regrouped per head into
//                                                     Megatron's [q_h | k_h | v_h]
//   H attention.output.dense.*                     -> ...self_attention.linear_proj.*
//   H ln.*                                         -> ...mlp.linear_fc1.layer_norm_*
//   H intermediate.dense.*                         -> ...mlp.linear_fc1.*
//   H output.dense.*                               -> ...mlp.linear_fc2.*
//   bert.encoder.ln.*                              -> decoder.final_layernorm.*
//   cls.predictions.transform.dense.*              -> lm_head.dense.*
//   cls.predictions.transform.LayerNorm.*          -> lm_head.layer_norm.*
//   cls.predictions.bias [V] (or .decoder.bias)    -> output_layer.bias [Vpad] (rows >= V zero)
//   cls.predictions.decoder.weight                 -> tied to word_embeddings (checked equal
//                                                     when present); with tie_word_embeddings
//                                                     false: output_layer.weight [Vpad, C]
//   bert.pooler.dense.*                            -> pooler.dense.*           (binary head)
//   cls.seq_relationship.{weight,bias} [2, C]      -> binary_head.*            (binary head)
// The binary head is there exactly when cls.seq_relationship is (HF's label 0 "B follows A" is
// Megatron's sentence order 0, not swapped). Config: num_hidden_layers, hidden_size,
// num_attention_heads, intermediate_size -> ffn_hidden_size, max_position_embeddings ->
// seq_length, vocab_size, layer_norm_eps -> norm_epsilon, hidden_dropout_prob,
// attention_probs_dropout_prob, initializer_range -> init_method_std. hidden_act gelu_new /
// gelu_pytorch_tanh / gelu_fast is ShardLM's GELU exactly; "gelu" (erf, what Megatron trains
// and every converted NVIDIA checkpoint says) imports with a note in HfModel::notes (ShardLM
// runs the tanh form, about 1e-3 apart per activation); export writes "gelu_new". Refused with
// kUnsupported naming the key: another hidden_act, position_embedding_type other than absolute,
// is_decoder / add_cross_attention, type_vocab_size other than 2 with the binary head, non-zero
// token types without it, and any tensor the mapping does not use. Export refuses what
// MegatronBert cannot express: a GPT model, no linear biases, RMSNorm, RoPE or no positions,
// SwiGLU, grouped-query attention, a head size other than hidden/heads, MoE.
//
//   HfModel m = read_hf_megatron_bert("bert_dir", 128);  // m.config.bert(), m.notes
//   write_hf_megatron_bert(m, "out_dir");                  // config.json + model.safetensors
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/ckpt/hf_model.h"

namespace shardlm::ckpt {

// Reads config.json + model.safetensors (or model.safetensors.index.json and its shards). The
// vocabulary is padded to a multiple of divisible_by x tensor_parallel_size (as training pads
// it), the output bias with zeros. Throws Error(kIo / kCorruptData / kUnsupported) naming the
// file and the tensor or key.
HfModel read_hf_megatron_bert(const std::string& hf_dir,
                              int64_t make_vocab_size_divisible_by = 128,
                              int64_t tensor_parallel_size = 1);

// Writes config.json + model.safetensors as MegatronBertForPreTraining (with the binary head)
// or MegatronBertForMaskedLM (without). Throws Error(kUnsupported) for what it cannot express.
void write_hf_megatron_bert(const HfModel& model, const std::string& out_dir);

}  // namespace shardlm::ckpt
