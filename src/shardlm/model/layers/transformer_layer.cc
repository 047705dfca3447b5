#include "shardlm/model/layers/transformer_layer.h"

#include <cmath>

namespace shardlm::model {

namespace {
std::string layer_prefix(int64_t i) { return "decoder.layers." + std::to_string(i); }
}  // namespace

TransformerLayer::TransformerLayer(const TransformerConfig& cfg, int64_t layer_index)
    : cfg_(cfg),
      index_(static_cast<uint32_t>(layer_index)),
      norm1_(layer_prefix(layer_index) + ".self_attention.linear_qkv.layer_norm_weight",
             layer_prefix(layer_index) + ".self_attention.linear_qkv.layer_norm_bias",
             cfg.hidden_size, cfg.normalization, cfg.norm_epsilon),
      norm2_(layer_prefix(layer_index) + ".mlp.linear_fc1.layer_norm_weight",
             layer_prefix(layer_index) + ".mlp.linear_fc1.layer_norm_bias", cfg.hidden_size,
             cfg.normalization, cfg.norm_epsilon),
      qkv_(layer_prefix(layer_index) + ".self_attention.linear_qkv", cfg.hidden_size,
           cfg.qkv_size(), cfg.add_bias_linear, Init::normal(cfg.init_method_std)),
      // Output projections use Megatron's scaled init: std / sqrt(2 * num_layers).
      proj_(layer_prefix(layer_index) + ".self_attention.linear_proj",
            cfg.num_attention_heads * cfg.head_dim(), cfg.hidden_size, cfg.add_bias_linear,
            Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers))),
      fc1_(layer_prefix(layer_index) + ".mlp.linear_fc1", cfg.hidden_size,
           cfg.swiglu ? 2 * cfg.ffn_size() : cfg.ffn_size(), cfg.add_bias_linear,
           Init::normal(cfg.init_method_std)),
      fc2_(layer_prefix(layer_index) + ".mlp.linear_fc2", cfg.ffn_size(), cfg.hidden_size,
           cfg.add_bias_linear, Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers))) {}

void TransformerLayer::register_parameters(ParameterRegistry& reg) const {
  norm1_.register_parameters(reg);
  qkv_.register_parameters(reg);
  proj_.register_parameters(reg);
  norm2_.register_parameters(reg);
  fc1_.register_parameters(reg);
  fc2_.register_parameters(reg);
}

void TransformerLayer::bind(ParameterRegistry& reg) {
  norm1_.bind(reg);
  qkv_.bind(reg);
  proj_.bind(reg);
  norm2_.bind(reg);
  fc1_.bind(reg);
  fc2_.bind(reg);
}

std::vector<Parameter*> TransformerLayer::parameters() const {
  std::vector<Parameter*> out;
  norm1_.append_parameters(out);
  qkv_.append_parameters(out);
  proj_.append_parameters(out);
  norm2_.append_parameters(out);
  fc1_.append_parameters(out);
  fc2_.append_parameters(out);
  return out;
}

TransformerLayer::Saved TransformerLayer::allocate_saved(TensorAllocator& alloc, DType dtype,
                                                         int64_t batch) const {
  const int64_t N = batch * cfg_.seq_length, C = cfg_.hidden_size;
  Saved s;
  s.ln1 = alloc.allocate(dtype, {N, C});
  s.norm1 = norm1_.allocate_saved(alloc, dtype, N);
  s.qkv = alloc.allocate(dtype, {N, cfg_.qkv_size()});
  s.attn = alloc.allocate(dtype, {N, cfg_.num_attention_heads * cfg_.head_dim()});
  // fp32 even in bf16/fp16 runs: the attention backward recomputes probabilities from it.
  const bool half = dtype == DType::kBF16 || dtype == DType::kF16;
  s.lse = alloc.allocate(half ? DType::kF32 : dtype, {batch, cfg_.num_attention_heads, cfg_.seq_length});
  s.x_mid = alloc.allocate(dtype, {N, C});
  s.ln2 = alloc.allocate(dtype, {N, C});
  s.norm2 = norm2_.allocate_saved(alloc, dtype, N);
  s.fc1 = alloc.allocate(dtype, {N, fc1_.out_features()});
  s.act = alloc.allocate(dtype, {N, cfg_.ffn_size()});
  return s;
}

TransformerLayer::Scratch TransformerLayer::allocate_scratch(const TransformerConfig& cfg,
                                                             TensorAllocator& alloc, DType dtype,
                                                             int64_t batch) {
  const int64_t N = batch * cfg.seq_length, C = cfg.hidden_size;
  Scratch s;
  s.c0 = alloc.allocate(dtype, {N, C});
  s.c1 = alloc.allocate(dtype, {N, C});
  s.c2 = alloc.allocate(dtype, {N, C});
  s.c3 = alloc.allocate(dtype, {N, C});
  s.a = alloc.allocate(dtype, {N, cfg.num_attention_heads * cfg.head_dim()});
  s.qkv = alloc.allocate(dtype, {N, cfg.qkv_size()});
  s.fc1 = alloc.allocate(dtype, {N, cfg.swiglu ? 2 * cfg.ffn_size() : cfg.ffn_size()});
  s.act = alloc.allocate(dtype, {N, cfg.ffn_size()});
  return s;
}

ops::AttentionShape TransformerLayer::attention_shape() const {
  return {cfg_.num_attention_heads, cfg_.query_groups(), cfg_.head_dim()};
}
double TransformerLayer::hidden_dropout(const StepContext& step) const {
  return step.training ? cfg_.hidden_dropout : 0.0;
}
double TransformerLayer::attention_dropout(const StepContext& step) const {
  return step.training ? cfg_.attention_dropout : 0.0;
}

void TransformerLayer::forward(StepContext& step, Tensor x_out, const Tensor& x,
                               const Saved& s, const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), T = cfg_.seq_length;
  // Attention block.
  norm1_.forward(ctx, s.ln1, s.norm1, x);
  qkv_.forward(ctx, s.qkv, s.ln1);
  ops::attention_forward(ctx, s.attn.reshape({B, T, s.attn.size(1)}), s.lse,
                         s.qkv.reshape({B, T, s.qkv.size(1)}), attention_shape(),
                         attention_dropout(step), step.dropout_key(index_, kDropoutAttentionProbs));
  proj_.forward(ctx, scratch.c0, s.attn);
  ops::dropout_forward(ctx, scratch.c1, scratch.c0, hidden_dropout(step),
                       step.dropout_key(index_, kDropoutAttentionOutput), 0);
  ops::add(ctx, s.x_mid, x, scratch.c1);
  // MLP block.
  norm2_.forward(ctx, s.ln2, s.norm2, s.x_mid);
  fc1_.forward(ctx, s.fc1, s.ln2);
  if (cfg_.swiglu)
    ops::swiglu_forward(ctx, s.act, s.fc1);
  else
    ops::gelu_forward(ctx, s.act, s.fc1);
  fc2_.forward(ctx, scratch.c0, s.act);
  ops::dropout_forward(ctx, scratch.c1, scratch.c0, hidden_dropout(step),
                       step.dropout_key(index_, kDropoutMlpOutput), 0);
  ops::add(ctx, x_out, s.x_mid, scratch.c1);
}

void TransformerLayer::backward(StepContext& step, Tensor dx, const Tensor& dx_out,
                                const Tensor& x, const Saved& s, const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), T = cfg_.seq_length;
  const Tensor& d_branch = scratch.c0;  // gradient of a block's output branch
  const Tensor& d_norm_out = scratch.c1;
  const Tensor& d_norm_in = scratch.c2;
  const Tensor& d_mid = scratch.c3;
  // MLP block: x_out = x_mid + dropout(fc2(act(fc1(norm2(x_mid))))).
  ops::dropout_backward(ctx, d_branch, dx_out, hidden_dropout(step),
                        step.dropout_key(index_, kDropoutMlpOutput), 0);
  fc2_.backward(ctx, scratch.act, d_branch, s.act);
  if (cfg_.swiglu)
    ops::swiglu_backward(ctx, scratch.fc1, scratch.act, s.fc1);
  else
    ops::gelu_backward(ctx, scratch.fc1, scratch.act, s.fc1);
  fc1_.backward(ctx, d_norm_out, scratch.fc1, s.ln2);
  norm2_.backward(ctx, d_norm_in, d_norm_out, s.x_mid, s.norm2);
  ops::add(ctx, d_mid, dx_out, d_norm_in);  // residual stream
  // Attention block: x_mid = x + dropout(proj(attention(qkv(norm1(x))))).
  ops::dropout_backward(ctx, d_branch, d_mid, hidden_dropout(step),
                        step.dropout_key(index_, kDropoutAttentionOutput), 0);
  proj_.backward(ctx, scratch.a, d_branch, s.attn);
  ops::attention_backward(ctx, scratch.qkv.reshape({B, T, s.qkv.size(1)}),
                          scratch.a.reshape({B, T, s.attn.size(1)}),
                          s.qkv.reshape({B, T, s.qkv.size(1)}),
                          s.attn.reshape({B, T, s.attn.size(1)}), s.lse, attention_shape(),
                          attention_dropout(step), step.dropout_key(index_, kDropoutAttentionProbs));
  qkv_.backward(ctx, d_norm_out, scratch.qkv, s.ln1);
  norm1_.backward(ctx, d_norm_in, d_norm_out, x, s.norm1);
  ops::add(ctx, dx, d_mid, d_norm_in);
}

}  // namespace shardlm::model
