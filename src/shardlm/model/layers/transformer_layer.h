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
// activation arena); Scratch holds backward temporaries shared by all layers.
#pragma once

#include <string>

#include "shardlm/model/layers/linear.h"
#include "shardlm/model/layers/norm.h"
#include "shardlm/model/module.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

class TransformerLayer {
 public:
  struct Saved {
    Tensor ln1;        // [N, C]    norm1 output
    Norm::Saved norm1;
    Tensor qkv;        // [N, QKV]  fused q/k/v projections (Megatron grouped layout)
    Tensor attn;       // [N, A]    attention output, heads concatenated (A = NH*HS)
    Tensor lse;        // [B, NH, T]
    Tensor x_mid;      // [N, C]    residual stream after attention
    Tensor ln2;        // [N, C]
    Norm::Saved norm2;
    Tensor fc1;        // [N, F or 2F]
    Tensor act;        // [N, F]
  };
  struct Scratch {
    Tensor c0, c1, c2, c3;  // [N, C]
    Tensor a;               // [N, A]
    Tensor qkv;             // [N, QKV]
    Tensor fc1;             // [N, F or 2F]
    Tensor act;             // [N, F]
  };

  TransformerLayer(const TransformerConfig& cfg, int64_t layer_index);

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);
  // This layer's bound parameters, in registration order.
  std::vector<Parameter*> parameters() const;
  Saved allocate_saved(TensorAllocator& alloc, DType dtype, int64_t batch) const;
  static Scratch allocate_scratch(const TransformerConfig& cfg, TensorAllocator& alloc,
                                  DType dtype, int64_t batch);

  // x, x_out: [B*T, C]. Scratch is used for forward temporaries too.
  void forward(StepContext& step, Tensor x_out, const Tensor& x, const Saved& saved,
               const Scratch& scratch) const;
  // dx (assigned) from dx_out; parameter gradients accumulate.
  void backward(StepContext& step, Tensor dx, const Tensor& dx_out, const Tensor& x,
                const Saved& saved, const Scratch& scratch) const;

 private:
  ops::AttentionShape attention_shape() const;
  double hidden_dropout(const StepContext& step) const;
  double attention_dropout(const StepContext& step) const;

  TransformerConfig cfg_;
  uint32_t index_;
  Norm norm1_, norm2_;
  Linear qkv_, proj_, fc1_, fc2_;
};

}  // namespace shardlm::model
