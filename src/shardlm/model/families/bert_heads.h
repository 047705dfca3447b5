// BertHeads: what Megatron's BertModel (pretrain_bert.py) puts after the decoder's final norm.
//
//   LM head:      x [N, C] → dense (C→C) → GELU → norm → the output layer (the word embedding
//                 when tied, vocab-parallel) + output_layer.bias [V/TP] → masked cross-entropy
//   binary head:  x at each sequence's first token ([CLS]) [B, C] → pooler dense (C→C) → tanh →
//                 binary_head (C→2) → cross-entropy with the sentence-order label, mean over B
//
// Names as Megatron Core's BertModel: lm_head.dense.{weight,bias}, lm_head.layer_norm.{weight,
// bias}, output_layer.bias, pooler.dense.{weight,bias}, binary_head.{weight,bias}. The dense,
// norm, pooler and binary head are replicated over tensor-parallel ranks; they run on all N rows
// (gathered under sequence parallelism) on every rank, so their gradients are complete without
// a reduction. The output bias is split with the vocabulary.
//
// GELU here is the tanh approximation of the MLP (ops::gelu_forward); Megatron's BertLMHead uses
// the erf form, a difference below 1e-3 of the activation.
#pragma once

#include <vector>

#include "shardlm/model/layers/linear.h"
#include "shardlm/model/layers/norm.h"
#include "shardlm/model/parameter.h"
#include "shardlm/model/tensor_parallel.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

class BertHeads {
 public:
  // Per micro-batch activations (one set per activation slot).
  struct Saved {
    Tensor pre;           // [N, C] dense output (GELU input)
    Tensor act;           // [N, C] GELU output (norm input)
    Norm::Saved norm;     // [N]
    Tensor cls;           // [B, C] binary head only: x at each sequence's first token
    Tensor pooled;        // [B, C] tanh output
    Tensor sop_logits;    // [B, 2]
    Tensor sop_lse;       // [B]
    Tensor sop_losses;    // [B]
  };
  // Backward temporaries, shared by the slots.
  struct Scratch {
    Tensor d0, d1;        // [N, C]
    Tensor dcls, dpooled; // [B, C]
    Tensor dsop_logits;   // [B, 2]
    Tensor dsop;          // [B]
  };

  BertHeads(const TransformerConfig& cfg, const TensorParallel& tp);

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  Saved allocate_saved(TensorAllocator& alloc, DType dtype, int64_t batch, int64_t rows) const;
  Scratch allocate_scratch(TensorAllocator& alloc, DType dtype, int64_t batch,
                           int64_t rows) const;

  // out [N, C] (the output layer's input) from the final norm's output x [N, C], all rows.
  void lm_transform_forward(DeviceContext& ctx, Tensor out, const Tensor& x, const Saved& s) const;
  // dx [N, C] (assigned) from dout [N, C] (complete, not partial over TP); gradients accumulate.
  // dout is used as scratch.
  void lm_transform_backward(DeviceContext& ctx, Tensor dx, const Tensor& dout, const Tensor& x,
                             const Saved& s, const Scratch& scratch) const;
  // The output layer's bias: this rank's vocabulary slice [V/TP].
  Parameter* output_bias() const { return output_bias_; }

  // Binary head forward on x [B*T, C] (all rows; sequence b's first token is row b*T);
  // sentence_order int32 [B] in {0, 1}. Returns the sum over the B sequences of their losses.
  double binary_forward(DeviceContext& ctx, const Tensor& x, int64_t batch, int64_t seq,
                        const Tensor& sentence_order, const Saved& s) const;
  // d(scale * sum_b loss_b)/d(first-token rows) into scratch.dcls [B, C]; gradients of the
  // pooler and binary head accumulate.
  void binary_backward(DeviceContext& ctx, const Scratch& scratch, int64_t batch,
                       const Tensor& sentence_order, double scale, const Saved& s) const;
  // dx [B*T, C] rows b*T += scratch.dcls[b].
  void add_first_token_grads(DeviceContext& ctx, const Tensor& dx, int64_t batch, int64_t seq,
                             const Scratch& scratch) const;

  // Parameters in registration order: the LM transform's and the output bias; the binary
  // head's (pooler, then binary head; empty without it).
  std::vector<Parameter*> lm_parameters() const;
  std::vector<Parameter*> binary_parameters() const;

 private:
  TransformerConfig cfg_;
  TensorParallel tp_;
  Linear lm_dense_;
  Norm lm_norm_;
  Linear pooler_;
  Linear binary_head_;
  Parameter* output_bias_ = nullptr;
};

}  // namespace shardlm::model
