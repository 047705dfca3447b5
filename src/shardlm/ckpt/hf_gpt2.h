// Hugging Face GPT-2 <-> ShardLM (Megatron names and layouts), both directions, for
// `shardlm convert` (DESIGN §7).
//
// Name and layout mapping (HF prefix "transformer." optional on read, written on export):
//   wte.weight [V, C]              -> embedding.word_embeddings.weight [Vpad, C] (rows >= V zero:
//                                     Megatron pads the vocabulary to a multiple of
//                                     make_vocab_size_divisible_by)
//   wpe.weight [P, C]              -> embedding.position_embeddings.weight
//   h.i.ln_1.{weight,bias}         -> decoder.layers.i.self_attention.linear_qkv.layer_norm_{weight,bias}
//   h.i.attn.c_attn.{weight,bias}  -> ...linear_qkv.{weight,bias}: HF's Conv1D stores [in, out],
//                                     so transposed; and HF's output columns [q all heads | k | v]
//                                     are regrouped into Megatron's per-group [q_g | k_g | v_g]
//   h.i.attn.c_proj.*              -> ...self_attention.linear_proj.* (transposed)
//   h.i.ln_2.*                     -> ...mlp.linear_fc1.layer_norm_*
//   h.i.mlp.c_fc.*                 -> ...mlp.linear_fc1.* (transposed)
//   h.i.mlp.c_proj.*               -> ...mlp.linear_fc2.* (transposed)
//   ln_f.*                         -> decoder.final_layernorm.*
//   lm_head.weight                 -> tied to wte (checked equal when present)
// GPT-2's activation must be the tanh approximation (gelu_new / gelu_pytorch_tanh), which is
// ShardLM's GELU. Tensors may be F32, F16 or BF16 on read (converted to fp32); export writes F32.
//
//   HfModel m = read_hf_gpt2("gpt2_dir", 128);      // m.config, m.tensors (our names, fp32)
//   write_hf_gpt2(m, "out_dir");                     // config.json + model.safetensors
#pragma once

#include <cstdint>
#include <string>

#include "shardlm/ckpt/hf_model.h"

namespace shardlm::ckpt {

// Reads config.json + model.safetensors (or model.safetensors.index.json and its shards). The
// vocabulary is padded to a multiple of divisible_by x tensor_parallel_size (as training pads it).
// Throws Error(kIo / kCorruptData / kUnsupported) naming the file and the tensor.
HfModel read_hf_gpt2(const std::string& hf_dir, int64_t make_vocab_size_divisible_by = 128,
                     int64_t tensor_parallel_size = 1);

// Writes config.json + model.safetensors in Hugging Face's GPT2LMHeadModel layout.
void write_hf_gpt2(const HfModel& model, const std::string& out_dir);

}  // namespace shardlm::ckpt
