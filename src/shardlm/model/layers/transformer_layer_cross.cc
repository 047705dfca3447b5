// TransformerLayer's cross-attention block (T5's decoder layers; transformer_layer.h):
//   x_cross = x_mid + dropout(linear_proj(attention(linear_q(norm3(x_mid)), linear_kv(enc))))
// The norm runs on the rank's rows and is gathered (SP) like the self-attention's; linear_kv
// reads the encoder output's rows of every sequence (all rows on every TP rank), so its input
// gradient is a partial sum over TP that the model reduces once after all decoder layers.
#include "shardlm/model/layers/transformer_layer.h"

namespace shardlm::model {

ops::AttentionShape TransformerLayer::cross_attention_shape(const Scratch& scratch) const {
  const int64_t heads = cfg_.num_attention_heads / tp_.size();
  ops::AttentionShape shape;
  shape.num_heads = shape.num_query_groups = heads;
  shape.head_dim = cfg_.head_dim();
  shape.head_offset = tp_.rank() * heads;  // dropout keyed by global head
  shape.dropout_num_heads = cfg_.num_attention_heads;
  shape.causal = false;
  shape.key_lengths = scratch.encoder_lengths;
  return shape;
}

void TransformerLayer::cross_attention_forward(StepContext& step, const Saved& s,
                                               const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), C = cfg_.hidden_size, T = seq();
  const int64_t TE = cfg_.encoder_seq_length, AL = s.cross_q.size(1);
  const SequenceRows rows = sequence_rows(B);
  const int64_t NL = rows.local(tp_);
  auto local = [&](const Tensor& t) { return t.flat_view(0, Shape({NL, C})); };
  const bool sp = tp_.sp();
  const Tensor ln_full = s.ln3.defined() ? s.ln3 : scratch.c1;
  const Tensor ln_local = sp ? local(scratch.c2) : ln_full;
  cross_->norm.forward(ctx, ln_local, s.norm3, s.x_mid);
  enter_column_region(ctx, tp_, rows, ln_full, ln_local, scratch.staging);
  cross_->q.forward(ctx, s.cross_q, ln_full);
  cross_->kv.forward(ctx, s.cross_kv, scratch.encoder_output);
  ops::cross_attention_forward(ctx, s.cross_attn.reshape({B, T, AL}), s.cross_lse,
                               s.cross_q.reshape({B, T, AL}), s.cross_kv.reshape({B, TE, 2 * AL}),
                               cross_attention_shape(scratch), attention_dropout(step),
                               step.dropout_key(index_, kDropoutCrossAttentionProbs));
  cross_->proj.forward(ctx, scratch.c0, s.cross_attn);
  const Tensor proj_out = sp ? local(scratch.c3) : scratch.c0;
  exit_row_region(ctx, tp_, rows, proj_out, scratch.c0, scratch.staging);
  dropout_add_rows_forward(ctx, tp_, rows, s.x_cross, proj_out, s.x_mid, hidden_dropout(step),
                           step.dropout_key(index_, kDropoutCrossAttentionOutput));
}

void TransformerLayer::cross_attention_backward(StepContext& step, const Tensor& d_x,
                                                const Saved& s, const Scratch& scratch,
                                                const Tensor& norm_grads) const {
  // Buffers: d_x is scratch.c3's rows (the caller's); c0, c1, c2, a and qkv are free here.
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), C = cfg_.hidden_size, T = seq();
  const int64_t TE = cfg_.encoder_seq_length, AL = s.cross_q.size(1), N = B * T;
  const SequenceRows rows = sequence_rows(B);
  const int64_t NL = rows.local(tp_);
  auto local = [&](const Tensor& t) { return t.flat_view(0, Shape({NL, C})); };
  const bool sp = tp_.sp();
  const Tensor d_branch = branch_grad(step, d_x, kDropoutCrossAttentionOutput, rows, scratch);
  const Tensor d_out_full = sp ? scratch.c1 : d_branch;
  exit_row_region_backward(ctx, tp_, rows, d_out_full, d_branch, scratch.staging);
  cross_->proj.backward(ctx, scratch.a, d_out_full, s.cross_attn);
  const Tensor dq = scratch.qkv.flat_view(0, Shape({N, AL}));
  ops::cross_attention_backward(ctx, dq.reshape({B, T, AL}),
                                scratch.cross_dkv.reshape({B, TE, 2 * AL}),
                                scratch.a.reshape({B, T, AL}), s.cross_q.reshape({B, T, AL}),
                                s.cross_kv.reshape({B, TE, 2 * AL}),
                                s.cross_attn.reshape({B, T, AL}), s.cross_lse,
                                cross_attention_shape(scratch), attention_dropout(step),
                                step.dropout_key(index_, kDropoutCrossAttentionProbs));
  cross_->kv.backward(ctx, scratch.cross_d_input, scratch.cross_dkv, scratch.encoder_output);
  ops::add_inplace(ctx, scratch.d_encoder_output, scratch.cross_d_input);
  // norm3's output for linear_q's weight gradient: saved, or recomputed into c1.
  if (!s.ln3.defined()) recompute_norm(ctx, cross_->norm, s.norm3, s.x_mid, rows, scratch);
  const Tensor ln_full = s.ln3.defined() ? s.ln3 : scratch.c1;
  const Tensor d_norm_out_full = scratch.c2;  // partial over TP
  cross_->q.backward(ctx, d_norm_out_full, dq, ln_full);
  const Tensor d_norm_out = sp ? local(scratch.c1) : d_norm_out_full;
  enter_column_region_backward(ctx, tp_, rows, d_norm_out, d_norm_out_full, scratch.staging);
  const Tensor d_norm_in = local(scratch.c0);
  if (sp)
    cross_->norm.backward(ctx, d_norm_in, d_norm_out, s.x_mid, s.norm3,
                          cross_->norm.dweight_view(norm_grads),
                          cross_->norm.dbias_view(norm_grads));
  else
    cross_->norm.backward(ctx, d_norm_in, d_norm_out, s.x_mid, s.norm3);
  ops::add_inplace(ctx, d_x, d_norm_in);  // the residual: d x_mid = d x_cross + the branch's
}

}  // namespace shardlm::model
