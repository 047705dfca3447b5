// TransformerLayer: one pre-norm GPT block, as Megatron Core builds it.
//
//   x_mid = x + dropout(linear_proj(attention(linear_qkv(norm1(x)))))
//   x_out = x_mid + dropout(linear_fc2(act(linear_fc1(norm2(x_mid)))))
//
// act is GELU (tanh form) or SwiGLU (fc1 then has 2F outputs). Global names use the TE spec:
// decoder.layers.<i>.self_attention.linear_qkv.{layer_norm_weight,layer_norm_bias,weight,bias},
// ...self_attention.linear_proj.*, ...mlp.linear_fc1.{layer_norm_*,weight,bias}, mlp.linear_fc2.*
//
// Memory: Saved holds this layer's activations for one micro-batch (allocated once from the
// activation arena); Scratch holds temporaries shared by all layers. Cheap outputs are not
// saved but recomputed in backward (as torch.compile does): the two norm outputs (from the
// saved input and statistics; re-gathered under SP, as Megatron's SP backward does) and the
// GELU/SwiGLU output (from the saved fc1 output): 2 [N, C] + [N, FL] less per layer, unless
// set_save_norm_activation(true) keeps them (Saved::ln1, ln2, act).
//
// Tensor parallelism (model/tensor_parallel.h): QKV and fc1 are column-parallel (QKV split by
// whole query groups in Megatron's grouped layout, or with fewer groups than ranks each rank's
// q heads plus a replica of its group's k/v whose gradient is summed over the replicas: see
// layers/qkv_layout.h; fc1 for SwiGLU split as [gate_r ; up_r]), proj and fc2 row-parallel;
// each rank runs attention on its NH/TP heads (dropout keyed by global head). The residual stream x / x_out / x_mid holds the rank's rows: all N = B*T rows
// (plain TP) or its sequence shard of N/TP rows (--sequence-parallel), where norms, dropout and
// residual adds run sharded and the norm gradients are summed over TP at the end of backward.
// Context parallelism (model/context_parallel.h): T is the rank's T_global/CP positions (two
// chunks); everything but attention is per token. With --cp-comm-type all_gather attention
// all-gathers the fused QKV rows of the whole sequence (again in backward, rather than keeping
// them) and runs each local chunk against the keys before it (ops::attention_chunk_forward);
// backward reduce-scatters the k/v gradients to the ranks that own those rows. With a2a
// (Ulysses) an all-to-all gives each CP rank the whole sequence's rows of 1/CP of the rank's
// query groups, plain causal attention runs on them (dropout keyed by global head and
// position), and a second all-to-all returns the output; backward exchanges dout, then dqkv
// (and, unless just recomputed, the qkv and output rows again). RoPE takes the rank's rows of
// the whole table, before any exchange.
// Mixture of experts (cfg.is_moe_layer): the MLP block is an MoeMlp (layers/moe_mlp.h) after the
// norm, which is then named ...pre_mlp_layernorm.{weight,bias} as in Megatron's MoE layer spec;
// its output is a partial sum over TP like fc2's, reduced at the same region boundary.
// T5 (cfg.t5_stack, TransformerConfig::stack_config): encoder layers are named encoder.layers.<i>
// and run bidirectional attention with the encoder's padding; decoder layers add Megatron's
// cross-attention block between self-attention and the MLP (transformer_layer_cross.cc):
//   x_cross = x_mid + dropout(linear_proj(attention(linear_q(norm3(x_mid)), linear_kv(enc))))
// with ...pre_cross_attn_layernorm.{weight,bias} and ...cross_attention.linear_{q,kv,proj}.*;
// linear_q / linear_kv are column-parallel by heads, linear_proj row-parallel. `enc` is the
// encoder output, all rows, which the model sets in Scratch::encoder_output; each decoder layer
// adds its (TP-partial) gradient of it into Scratch::d_encoder_output.
// Shapes below: N = B*T, NL = rows of the rank (N or N/TP), NHL/GL = local heads/groups,
// QKVL = (NHL+2*GL)*HS, AL = NHL*HS, FL = F/TP, NE = B*T_encoder.
#pragma once

#include <optional>
#include <string>

#include "shardlm/model/context_parallel.h"
#include "shardlm/model/layers/linear.h"
#include "shardlm/model/expert_parallel.h"
#include "shardlm/model/fp8_linear.h"
#include "shardlm/model/layers/moe_mlp.h"
#include "shardlm/model/layers/norm.h"
#include "shardlm/model/layers/qkv_layout.h"
#include "shardlm/model/module.h"
#include "shardlm/model/tensor_parallel.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

class TransformerLayer {
 public:
  static constexpr uint32_t kEncoderLayerKeyBase = 1u << 20;
  struct Saved {
    Norm::Saved norm1; // [NL]       norm1 statistics (its output is recomputed)
    Tensor qkv;        // [N, QKVL] fused q/k/v projections (Megatron grouped layout)
    Tensor attn;       // [N, AL]   attention output, heads concatenated
    Tensor lse;        // [B, NHL, T]; --cp-comm-type a2a: [B, NHL/CP, T_global]
    Tensor x_mid;      // [NL, C]   residual stream after attention
    Norm::Saved norm2; // [NL]
    Tensor fc1;        // [N, FL or 2FL] fc1 output (GELU: pre-activation)
    // Only when the cheap outputs are saved (set_save_norm_activation): the norm outputs that
    // feed QKV and fc1 (all rows, gathered under SP) and the activation output feeding fc2.
    Tensor ln1, ln2;   // [N, C]
    Tensor act;        // [N, FL]
    MoeMlp::Saved moe; // MoE layers only (fc1 and act above are then unused)
    // T5 decoder layers: the cross-attention block (ln3 only when the norm outputs are saved).
    Norm::Saved norm3; // [NL]
    Tensor cross_q;    // [N, AL]
    Tensor cross_kv;   // [NE, 2*AL] linear_kv of the encoder output ([k | v] per head)
    Tensor cross_attn; // [N, AL]
    Tensor cross_lse;  // [B, NHL, T]
    Tensor x_cross;    // [NL, C] residual stream after cross-attention (the MLP's input)
    Tensor ln3;        // [N, C]
  };
  struct Scratch {
    Tensor c0, c1, c2, c3;  // [N, C]; c1 holds a norm output (all rows) in forward and backward
    Tensor a;               // [N, AL]
    Tensor qkv;             // [N, QKVL]
    Tensor fc1;             // [N, FL or 2FL] (models with dense MLP layers only)
    Tensor act;             // [N, FL] forward: activation output; backward: its gradient
    Tensor staging;         // [N, C] sequence parallelism with B > 1 only (row reorder)
    Tensor sp_grads;        // [2 norms' grad_numel] sequence parallelism only
    Tensor rope_cos_sin;    // [T, R/2, 2] fp32 (fp64 in fp64 runs); --position-embedding-type rope only
    // Context parallelism only (T: the local sequence, T_global = CP·T):
    Tensor rope_global;     // [T_global, R/2, 2] the whole table; rope_cos_sin takes the rank's rows
    // --cp-comm-type all_gather:
    Tensor cp_kv;           // [B*T_global, QKVL] the sequence's fused QKV rows, global order
    Tensor cp_dkv;          // [B*T_global, QKVL] their gradient (k/v columns)
    Tensor cp_staging;      // [B*T_global, QKVL] the collectives' rank-major order; dkv of chunk 0
    // --cp-comm-type a2a (each as large as the rank's own rows: the sequence CP times longer,
    // the heads CP times fewer):
    Tensor cp_heads_qkv;    // [B*T_global, QKVL/CP] the rank's share of the groups, global order
    Tensor cp_heads_out;    // [B*T_global, AL/CP] their attention output
    Tensor cp_send, cp_recv;  // [N*QKVL] the all-to-alls' blocks
    Tensor cp_index;        // int32 [4*B*T_global] the exchanges' row permutations
    MoeMlp::Scratch moe;    // models with MoE layers only
    Fp8Workspace fp8;       // --fp8-format only: the fp8 linears' quantised operands
    // BERT's padding mask: int32 [B] valid tokens per sequence (model::Batch::key_lengths), set
    // by the model before each forward / backward; undefined: no padding.
    Tensor key_lengths;
    // T5 decoder layers, set by the model: the encoder output (all rows, gathered under SP) and
    // the gradient every decoder layer adds its share to (partial over TP; the model zeroes it
    // before the decoder's backward and then reduces it), once per activation slot; the
    // encoder's valid tokens per sequence (int32 [B], the cross-attention keys' padding;
    // undefined: none) with each micro-batch.
    Tensor encoder_output;    // [NE, C]
    Tensor encoder_lengths;   // [B]
    Tensor d_encoder_output;  // [NE, C]
    // Allocated with the scratch: linear_kv's output gradient and input gradient.
    Tensor cross_dkv;         // [NE, 2*AL]
    Tensor cross_d_input;     // [NE, C]
  };

  // tp: the tensor-parallel group (default: none, the single-rank layer); with fewer query
  // groups than ranks tp.query_group must be set (GPTModel does). cp: the context-parallel
  // group; the layer then sees T = cfg.seq_length / CP positions of each sequence.
  TransformerLayer(const TransformerConfig& cfg, int64_t layer_index,
                   const TensorParallel& tp = {}, const ContextParallel& cp = {},
                   const ExpertParallel& ep = {});

  // Save the norm and activation outputs instead of recomputing them in backward
  // (RecomputeConfig::norm_activation = false). Call before allocate_saved.
  void set_save_norm_activation(bool save) { save_norm_activation_ = save; }

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  // This layer's bound parameters, in registration order.
  std::vector<Parameter*> parameters() const;
  // shared_attention (selective recompute): take attn and lse from it instead of allocating.
  // allocate_attention_output allocates only those two (the buffer the layers share).
  Saved allocate_attention_output(TensorAllocator& alloc, DType dtype, int64_t batch) const;
  Saved allocate_saved(TensorAllocator& alloc, DType dtype, int64_t batch,
                       const Saved* shared_attention = nullptr) const;
  // Selective recompute: re-runs the core attention from the saved (post-RoPE) qkv into s.attn
  // and s.lse, with the same dropout masks as the forward. Under CP it leaves the sequence's
  // gathered rows in scratch for this layer's backward (pass attention_recomputed = true).
  void recompute_attention(StepContext& step, const Saved& s, const Scratch& scratch) const;
  static Scratch allocate_scratch(const TransformerConfig& cfg, TensorAllocator& alloc,
                                  DType dtype, int64_t batch);
  static Scratch allocate_scratch(const TransformerConfig& cfg, const TensorParallel& tp,
                                  TensorAllocator& alloc, DType dtype, int64_t batch,
                                  const ContextParallel& cp = {},
                                  const ExpertParallel& ep = {});

  // x, x_out: [NL, C] (the rank's rows). Scratch is used for forward temporaries too.
  void forward(StepContext& step, Tensor x_out, const Tensor& x, const Saved& saved,
               const Scratch& scratch) const;
  // dx (assigned) from dx_out; parameter gradients accumulate. attention_recomputed: this
  // layer's recompute_attention ran just before, with the same scratch.
  void backward(StepContext& step, Tensor dx, const Tensor& dx_out, const Tensor& x,
                const Saved& saved, const Scratch& scratch,
                bool attention_recomputed = false) const;

 private:
  ops::AttentionShape attention_shape() const;
  // attention_shape() with the mask of this micro-batch (scratch.key_lengths).
  ops::AttentionShape masked_attention_shape(const Scratch& scratch) const;
  // --cp-comm-type a2a: the shape of this CP rank's 1/CP of the rank's heads (the global heads
  // after the TP rank's first head and the earlier CP ranks' shares), for the dropout masks.
  ops::AttentionShape head_share_shape() const;
  AllToAllBuffers all_to_all_buffers(const Scratch& scratch) const {
    return {scratch.cp_index, scratch.cp_send, scratch.cp_recv};
  }
  // The workspace for this layer's fp8 linears (null when the layer runs in 16-bit).
  const Fp8Workspace* fp8_workspace(const Scratch& scratch) const {
    return cfg_.fp8_layer(index_) ? &scratch.fp8 : nullptr;
  }
  // T5's cross-attention block (decoder layers): forward from s.x_mid into s.x_cross; backward
  // from d_x (the gradient of x_cross, the rank's rows) to the gradient of x_mid, in place.
  // norm_grads: the block's norm gradient under SP (summed over TP by the caller), else undefined.
  void cross_attention_forward(StepContext& step, const Saved& s, const Scratch& scratch) const;
  void cross_attention_backward(StepContext& step, const Tensor& d_x, const Saved& s,
                                const Scratch& scratch, const Tensor& norm_grads) const;
  ops::AttentionShape cross_attention_shape(const Scratch& scratch) const;
  // The MLP block's input: the residual stream after attention (x_mid), or after T5's
  // cross-attention (x_cross).
  const Tensor& mlp_input(const Saved& s) const { return cross_ ? s.x_cross : s.x_mid; }
  // The gradient of a block's output branch on the rank's rows: dropout's backward of dout at
  // `site` into scratch.c0, or dout itself when nothing is dropped.
  Tensor branch_grad(StepContext& step, const Tensor& dout, uint32_t site,
                     const SequenceRows& rows, const Scratch& scratch) const;
  // Positions of each sequence this rank holds (cfg.seq_length / CP).
  int64_t seq() const { return cp_.local_length(cfg_.seq_length); }
  SequenceRows sequence_rows(int64_t batch) const {
    return SequenceRows{batch, seq(), cfg_.hidden_size, cp_};
  }
  // Core attention of s.qkv into s.attn / s.lse; its backward into scratch.qkv from scratch.a.
  // Under CP (all_gather): the sequence's rows are all-gathered into scratch.cp_kv (again in
  // backward) and each local chunk attends to the keys before it; key/value gradients are
  // reduce-scattered. rows_gathered: scratch still holds forward's gathered/exchanged rows.
  void attention(StepContext& step, const Saved& s, const Scratch& scratch) const;
  void attention_backward(StepContext& step, const Saved& s, const Scratch& scratch,
                          bool rows_gathered) const;
  // The same under --cp-comm-type a2a: qkv rows to scratch.cp_heads_qkv, attention of the
  // whole sequence into scratch.cp_heads_out, back into s.attn (backward: scratch.a and
  // scratch.qkv are exchanged in place).
  void all_to_all_attention(StepContext& step, const Saved& s, const Scratch& scratch) const;
  void all_to_all_attention_backward(StepContext& step, const Saved& s, const Scratch& scratch,
                                     bool rows_exchanged) const;
  double hidden_dropout(const StepContext& step) const;
  double attention_dropout(const StepContext& step) const;
  // RoPE (--position-embedding-type rope) in place on the q/k heads of qkv [N, QKVL]: forward
  // rotates by +θ after linear_qkv (so attention and its saved input see rotated q/k); backward
  // rotates dqkv by -θ before linear_qkv's backward. Refills scratch.rope_cos_sin each call
  // (T·R/2 entries, cheap) so the layer needs no state. No-op for other position types.
  // Recomputes norm(in) from its saved statistics into scratch.c1 (all rows; under SP the
  // rank's rows via scratch.c0, then all-gathered) for a weight gradient in backward.
  void recompute_norm(DeviceContext& ctx, const Norm& norm, const Norm::Saved& stats,
                      const Tensor& in, const SequenceRows& rows, const Scratch& scratch) const;
  void apply_rope(DeviceContext& ctx, const Tensor& qkv, const Scratch& scratch, int64_t batch,
                  bool backward) const;
  // The dense MLP's backward: d_in_full (the norm output's gradient, all rows, partial over TP)
  // from d_out_full (fc2's output gradient, all rows); recomputes what was not saved.
  void mlp_backward(DeviceContext& ctx, const Tensor& d_in_full, const Tensor& d_out_full,
                    const SequenceRows& rows, const Saved& s, const Scratch& scratch) const;

  TransformerConfig cfg_;
  TensorParallel tp_;
  ContextParallel cp_;
  // The layer's key for dropout masks (and fp8 / MoE choices): its index; T5's encoder layers
  // use kEncoderLayerKeyBase + index, so their masks differ from the decoder layers'.
  uint32_t index_;
  QkvLayout qkv_layout_;  // the rank's QKV rows and query groups
  Norm norm1_, norm2_;
  Linear qkv_, proj_, fc1_, fc2_;  // fc1_/fc2_: dense layers only
  std::optional<MoeMlp> moe_;
  struct CrossAttentionBlock {  // T5 decoder layers
    Norm norm;
    Linear q, kv, proj;
  };
  std::optional<CrossAttentionBlock> cross_;
  bool save_norm_activation_ = false;
};

}  // namespace shardlm::model
