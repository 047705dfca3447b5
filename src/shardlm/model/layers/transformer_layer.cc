#include "shardlm/model/layers/transformer_layer.h"

#include <algorithm>
#include <cmath>

#include "shardlm/base/check.h"

namespace shardlm::model {

namespace {
std::string stack_prefix(const TransformerConfig& cfg, int64_t i) {
  return (cfg.t5_stack == T5Stack::kEncoder ? "encoder.layers." : "decoder.layers.") +
         std::to_string(i);
}
// Megatron's names for the norm before the MLP: fused into linear_fc1 (TE spec) in dense layers,
// its own module in MoE layers.
std::string mlp_norm_prefix(const TransformerConfig& cfg, int64_t i) {
  return stack_prefix(cfg, i) +
         (cfg.is_moe_layer(i) ? ".pre_mlp_layernorm." : ".mlp.linear_fc1.layer_norm_");
}
uint32_t layer_key(const TransformerConfig& cfg, int64_t i) {
  const uint32_t base =
      cfg.t5_stack == T5Stack::kEncoder ? TransformerLayer::kEncoderLayerKeyBase : 0u;
  return base + static_cast<uint32_t>(i);
}
}  // namespace

TransformerLayer::TransformerLayer(const TransformerConfig& cfg, int64_t layer_index,
                                   const TensorParallel& tp, const ContextParallel& cp,
                                   const ExpertParallel& ep)
    : cfg_(cfg),
      tp_(tp),
      cp_(cp),
      index_(layer_key(cfg, layer_index)),
      qkv_layout_(QkvLayout::of(cfg, tp.rank(), tp.size())),
      norm1_(stack_prefix(cfg, layer_index) + ".self_attention.linear_qkv.layer_norm_weight",
             stack_prefix(cfg, layer_index) + ".self_attention.linear_qkv.layer_norm_bias",
             cfg.hidden_size, cfg.normalization, cfg.norm_epsilon),
      norm2_(mlp_norm_prefix(cfg, layer_index) + "weight",
             mlp_norm_prefix(cfg, layer_index) + "bias", cfg.hidden_size, cfg.normalization,
             cfg.norm_epsilon),
      // QKV: the rank's rows of the grouped layout (layers/qkv_layout.h).
      qkv_(stack_prefix(cfg, layer_index) + ".self_attention.linear_qkv", cfg.hidden_size,
           cfg.qkv_size(), cfg.add_bias_linear, Init::normal(cfg.init_method_std), tp,
           qkv_layout_.split),
      // Output projections use Megatron's scaled init: std / sqrt(2 * num_layers).
      proj_(stack_prefix(cfg, layer_index) + ".self_attention.linear_proj",
            cfg.num_attention_heads * cfg.head_dim(), cfg.hidden_size, cfg.add_bias_linear,
            Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers)),
            ParallelMode::kRow, tp),
      // SwiGLU: [gate ; up] split per chunk, so each rank pairs matching gate and up rows.
      fc1_(stack_prefix(cfg, layer_index) + ".mlp.linear_fc1", cfg.hidden_size,
           cfg.swiglu ? 2 * cfg.ffn_size() : cfg.ffn_size(), cfg.add_bias_linear,
           Init::normal(cfg.init_method_std), ParallelMode::kColumn, tp, cfg.swiglu ? 2 : 1),
      fc2_(stack_prefix(cfg, layer_index) + ".mlp.linear_fc2", cfg.ffn_size(), cfg.hidden_size,
           cfg.add_bias_linear, Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers)),
           ParallelMode::kRow, tp) {
  if (cfg.is_moe_layer(layer_index)) moe_.emplace(cfg, layer_index, tp, cp, ep);
  if (cfg.cross_attention()) {
    const std::string prefix = stack_prefix(cfg, layer_index);
    const int64_t C = cfg.hidden_size, A = cfg.num_attention_heads * cfg.head_dim();
    cross_.emplace(CrossAttentionBlock{
        Norm(prefix + ".pre_cross_attn_layernorm.weight", prefix + ".pre_cross_attn_layernorm.bias",
             C, cfg.normalization, cfg.norm_epsilon),
        Linear(prefix + ".cross_attention.linear_q", C, A, cfg.add_bias_linear,
               Init::normal(cfg.init_method_std), ParallelMode::kColumn, tp),
        // [k | v] per head: a column split by whole heads keeps each rank's pairs together.
        Linear(prefix + ".cross_attention.linear_kv", C, 2 * A, cfg.add_bias_linear,
               Init::normal(cfg.init_method_std), ParallelMode::kColumn, tp),
        Linear(prefix + ".cross_attention.linear_proj", A, C, cfg.add_bias_linear,
               Init::normal(cfg.init_method_std / std::sqrt(2.0 * cfg.num_layers)),
               ParallelMode::kRow, tp)});
  }
  if (cfg.fp8_layer(layer_index)) {
    // The amaxes are shared over TP (split weights and features) and CP (split tokens).
    const Fp8Linear fp8{cfg.fp8, {tp.group, cp.group}};
    for (Linear* l : {&qkv_, &proj_, &fc1_, &fc2_}) l->enable_fp8(fp8);
  }
  // --cp-comm-type a2a splits the rank's query groups over CP (TrainConfig checks it first).
  if (cp_.all_to_all) cfg.validate_cp_all_to_all(tp.size(), cp.size());
  SHARDLM_REQUIRE(!qkv_layout_.replicated() || (tp_.query_group != nullptr &&
                                                 tp_.query_group->size() == qkv_layout_.replicas),
                  ErrorKind::kInternal,
                  "TransformerLayer: " + std::to_string(cfg.query_groups()) +
                      " query groups on " + std::to_string(tp.size()) +
                      " tensor-parallel ranks need TensorParallel::query_group, the " +
                      std::to_string(qkv_layout_.replicas) +
                      " ranks sharing a group (split_query_group_replicas; GPTModel sets it)");
}

void TransformerLayer::register_parameters(ParameterRegistry& reg) const {
  norm1_.register_parameters(reg);
  qkv_.register_parameters(reg);
  proj_.register_parameters(reg);
  if (cross_) {
    cross_->norm.register_parameters(reg);
    for (const Linear* l : {&cross_->q, &cross_->kv, &cross_->proj}) l->register_parameters(reg);
  }
  norm2_.register_parameters(reg);
  if (moe_) {
    moe_->register_parameters(reg);
    return;
  }
  fc1_.register_parameters(reg);
  fc2_.register_parameters(reg);
}

void TransformerLayer::bind(ParameterRegistry& reg) {
  norm1_.bind(reg);
  qkv_.bind(reg);
  proj_.bind(reg);
  if (cross_) {
    cross_->norm.bind(reg);
    for (Linear* l : {&cross_->q, &cross_->kv, &cross_->proj}) l->bind(reg);
  }
  norm2_.bind(reg);
  if (moe_) {
    moe_->bind(reg);
    return;
  }
  fc1_.bind(reg);
  fc2_.bind(reg);
}

std::vector<Parameter*> TransformerLayer::parameters() const {
  std::vector<Parameter*> out;
  norm1_.append_parameters(out);
  qkv_.append_parameters(out);
  proj_.append_parameters(out);
  if (cross_) {
    cross_->norm.append_parameters(out);
    for (const Linear* l : {&cross_->q, &cross_->kv, &cross_->proj}) l->append_parameters(out);
  }
  norm2_.append_parameters(out);
  if (moe_) {
    moe_->append_parameters(out);
    return out;
  }
  fc1_.append_parameters(out);
  fc2_.append_parameters(out);
  return out;
}

TransformerLayer::Saved TransformerLayer::allocate_attention_output(TensorAllocator& alloc,
                                                                    DType dtype,
                                                                    int64_t batch) const {
  const int64_t heads = cfg_.num_attention_heads / tp_.size();
  Saved s;
  s.attn = alloc.allocate(dtype, {batch * seq(), heads * cfg_.head_dim()});
  // fp32 even in bf16/fp16 runs: the attention backward recomputes probabilities from it.
  const bool half = dtype == DType::kBF16 || dtype == DType::kF16;
  s.lse = alloc.allocate(half ? DType::kF32 : dtype, {batch, heads, seq()});
  return s;
}

TransformerLayer::Saved TransformerLayer::allocate_saved(TensorAllocator& alloc, DType dtype,
                                                         int64_t batch,
                                                         const Saved* shared_attention) const {
  const int64_t N = batch * seq(), C = cfg_.hidden_size;
  const int64_t NL = sequence_rows(batch).local(tp_);
  Saved s;
  s.norm1 = norm1_.allocate_saved(alloc, dtype, NL);
  s.qkv = alloc.allocate(dtype, {N, qkv_layout_.local_rows()});
  const Saved attention = shared_attention != nullptr
                             ? *shared_attention
                             : allocate_attention_output(alloc, dtype, batch);
  s.attn = attention.attn;
  s.lse = attention.lse;
  s.x_mid = alloc.allocate(dtype, {NL, C});
  s.norm2 = norm2_.allocate_saved(alloc, dtype, NL);
  if (moe_)
    s.moe = moe_->allocate_saved(alloc, dtype, N);
  else
    s.fc1 = alloc.allocate(dtype, {N, fc1_.out_features()});
  if (save_norm_activation_) {
    s.ln1 = alloc.allocate(dtype, {N, C});
    s.ln2 = alloc.allocate(dtype, {N, C});
    if (!moe_) s.act = alloc.allocate(dtype, {N, cfg_.ffn_size() / tp_.size()});
  }
  if (cross_) {
    const int64_t AL = cfg_.num_attention_heads / tp_.size() * cfg_.head_dim();
    const int64_t NE = batch * cfg_.encoder_seq_length;
    s.norm3 = cross_->norm.allocate_saved(alloc, dtype, NL);
    s.cross_q = alloc.allocate(dtype, {N, AL});
    s.cross_kv = alloc.allocate(dtype, {NE, 2 * AL});
    s.cross_attn = alloc.allocate(dtype, {N, AL});
    s.cross_lse = alloc.allocate(s.lse.dtype(), {batch, AL / cfg_.head_dim(), seq()});
    s.x_cross = alloc.allocate(dtype, {NL, C});
    if (save_norm_activation_) s.ln3 = alloc.allocate(dtype, {N, C});
  }
  return s;
}

TransformerLayer::Scratch TransformerLayer::allocate_scratch(const TransformerConfig& cfg,
                                                             TensorAllocator& alloc, DType dtype,
                                                             int64_t batch) {
  return allocate_scratch(cfg, TensorParallel{}, alloc, dtype, batch, ContextParallel{});
}

TransformerLayer::Scratch TransformerLayer::allocate_scratch(const TransformerConfig& cfg,
                                                             const TensorParallel& tp,
                                                             TensorAllocator& alloc, DType dtype,
                                                             int64_t batch,
                                                             const ContextParallel& cp,
                                                             const ExpertParallel& ep) {
  const int64_t T = cp.local_length(cfg.seq_length);
  const int64_t N = batch * T, C = cfg.hidden_size, P = tp.size();
  const int64_t F = cfg.ffn_size() / P;
  Scratch s;
  s.c0 = alloc.allocate(dtype, {N, C});
  s.c1 = alloc.allocate(dtype, {N, C});
  s.c2 = alloc.allocate(dtype, {N, C});
  s.c3 = alloc.allocate(dtype, {N, C});
  s.a = alloc.allocate(dtype, {N, cfg.num_attention_heads / P * cfg.head_dim()});
  const int64_t qkv_width = QkvLayout::of(cfg, tp.rank(), P).local_rows();
  s.qkv = alloc.allocate(dtype, {N, qkv_width});
  if (cfg.num_moe_layers() < cfg.num_layers) {  // the dense MLP's; MoE layers have their own
    s.fc1 = alloc.allocate(dtype, {N, cfg.swiglu ? 2 * F : F});
    s.act = alloc.allocate(dtype, {N, F});
  }
  if (tp.sp() && batch > 1) s.staging = alloc.allocate(dtype, {N, C});
  if (tp.sp()) {
    const int64_t per_norm = cfg.normalization == Normalization::kLayerNorm ? 2 * C : C;
    s.sp_grads = alloc.allocate(dtype, {(cfg.cross_attention() ? 3 : 2) * per_norm});
  }
  if (cfg.cross_attention()) {
    const int64_t NE = batch * cfg.encoder_seq_length;
    s.cross_dkv = alloc.allocate(dtype, {NE, 2 * cfg.num_attention_heads / P * cfg.head_dim()});
    s.cross_d_input = alloc.allocate(dtype, {NE, C});
  }
  const DType table = dtype == DType::kF64 ? DType::kF64 : DType::kF32;  // >= fp32 (ops.h)
  if (cfg.position_embedding == PositionEmbedding::kRope)
    s.rope_cos_sin = alloc.allocate(table, {T, cfg.rotary_dim() / 2, 2});
  if (cfg.num_experts > 0) s.moe = MoeMlp::allocate_scratch(cfg, tp, ep, alloc, dtype, N, batch);
  if (cfg.fp8.enabled()) {
    const int64_t AL = cfg.num_attention_heads / P * cfg.head_dim();
    const int64_t FC1 = cfg.swiglu ? 2 * F : F;
    s.fp8 = Fp8Workspace::allocate(alloc, cfg.fp8, N, std::max({C, AL, F}),
                                   std::max({qkv_width, C, FC1}),
                                   std::max({qkv_width * C, C * AL, FC1 * C, C * F}));
  }
  if (cp.enabled()) {
    const int64_t global_rows = batch * cfg.seq_length, CP = cp.size();
    if (cp.all_to_all) {
      const int64_t AL = cfg.num_attention_heads / P * cfg.head_dim();
      s.cp_heads_qkv = alloc.allocate(dtype, {global_rows, qkv_width / CP});
      s.cp_heads_out = alloc.allocate(dtype, {global_rows, AL / CP});
      s.cp_send = alloc.allocate(dtype, {N * qkv_width});
      s.cp_recv = alloc.allocate(dtype, {N * qkv_width});
      s.cp_index = alloc.allocate(DType::kI32, {4 * global_rows});
    } else {
      s.cp_kv = alloc.allocate(dtype, {global_rows, qkv_width});
      s.cp_dkv = alloc.allocate(dtype, {global_rows, qkv_width});
      s.cp_staging = alloc.allocate(dtype, {global_rows, qkv_width});
    }
    if (cfg.position_embedding == PositionEmbedding::kRope)
      s.rope_global = alloc.allocate(table, {cfg.seq_length, cfg.rotary_dim() / 2, 2});
  }
  return s;
}

ops::AttentionShape TransformerLayer::attention_shape() const {
  // The rank's heads are global heads [rank*NH/TP, (rank+1)*NH/TP): dropout keys use those.
  const QkvLayout& q = qkv_layout_;
  ops::AttentionShape shape;
  shape.num_heads = q.heads;
  shape.num_query_groups = q.groups;
  shape.head_dim = q.head_dim;
  shape.head_offset = q.first_head;
  shape.dropout_num_heads = cfg_.num_attention_heads;
  shape.causal = cfg_.causal();
  return shape;
}

ops::AttentionShape TransformerLayer::masked_attention_shape(const Scratch& scratch) const {
  ops::AttentionShape shape = attention_shape();
  shape.key_lengths = scratch.key_lengths;
  return shape;
}

ops::AttentionShape TransformerLayer::head_share_shape() const {
  ops::AttentionShape shape = attention_shape();
  shape.num_heads /= cp_.size();
  shape.num_query_groups /= cp_.size();
  shape.head_offset += cp_.rank() * shape.num_heads;
  return shape;
}

double TransformerLayer::hidden_dropout(const StepContext& step) const {
  return step.training ? cfg_.hidden_dropout : 0.0;
}
double TransformerLayer::attention_dropout(const StepContext& step) const {
  return step.training ? cfg_.attention_dropout : 0.0;
}

void TransformerLayer::apply_rope(DeviceContext& ctx, const Tensor& qkv, const Scratch& scratch,
                                  int64_t batch, bool backward) const {
  if (cfg_.position_embedding != PositionEmbedding::kRope) return;
  if (cp_.enabled()) {  // the rank's positions: its chunks' rows of the whole table
    ops::rope_cos_sin(ctx, scratch.rope_global, cfg_.rope_frequencies());
    const int64_t row = scratch.rope_global.numel() / cfg_.seq_length;
    for (const PositionRun& run : position_runs(cp_, cfg_.seq_length, 0, seq()))
      ops::copy(ctx, scratch.rope_cos_sin.flat_view(run.local * row, Shape({run.count * row})),
                scratch.rope_global.flat_view(run.global * row, Shape({run.count * row})));
  } else {
    ops::rope_cos_sin(ctx, scratch.rope_cos_sin, cfg_.rope_frequencies());
  }
  const Tensor x = qkv.reshape({batch, seq(), qkv.size(1)});  // [B, T, QKVL]
  if (backward)
    ops::rope_backward(ctx, x, x, scratch.rope_cos_sin, attention_shape(), cfg_.rotary_interleaved);
  else
    ops::rope_forward(ctx, x, x, scratch.rope_cos_sin, attention_shape(), cfg_.rotary_interleaved);
}

void TransformerLayer::recompute_attention(StepContext& step, const Saved& s,
                                           const Scratch& scratch) const {
  attention(step, s, scratch);
}

void TransformerLayer::attention(StepContext& step, const Saved& s, const Scratch& scratch) const {
  const int64_t B = s.lse.size(0), T = seq();
  const Tensor out = s.attn.reshape({B, T, s.attn.size(1)});
  const Tensor qkv = s.qkv.reshape({B, T, s.qkv.size(1)});
  const double p = attention_dropout(step);
  const DropoutKey key = step.dropout_key(index_, kDropoutAttentionProbs);
  if (!cp_.enabled()) {
    ops::attention_forward(step.device, out, s.lse, qkv, masked_attention_shape(scratch), p, key);
    return;
  }
  if (cp_.all_to_all) {
    all_to_all_attention(step, s, scratch);
    return;
  }
  const int64_t T_global = cfg_.seq_length, c = cp_.chunk_length(T_global);
  const Tensor kv = scratch.cp_kv.reshape({B, T_global, s.qkv.size(1)});
  gather_sequence(step.device, cp_, B, T_global, kv, s.qkv, scratch.cp_staging);
  for (int k = 0; k < cp_.num_chunks(); ++k)
    ops::attention_chunk_forward(step.device, out, s.lse, qkv, kv, attention_shape(),
                                 {k * c, c, cp_.chunk_position(k, T_global)}, p, key);
}

void TransformerLayer::attention_backward(StepContext& step, const Saved& s,
                                          const Scratch& scratch, bool rows_gathered) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), T = seq(), W = s.qkv.size(1);
  const Tensor dqkv = scratch.qkv.reshape({B, T, W});
  const Tensor dout = scratch.a.reshape({B, T, s.attn.size(1)});
  const Tensor qkv = s.qkv.reshape({B, T, W});
  const Tensor out = s.attn.reshape({B, T, s.attn.size(1)});
  const double p = attention_dropout(step);
  const DropoutKey key = step.dropout_key(index_, kDropoutAttentionProbs);
  if (!cp_.enabled()) {
    ops::attention_backward(ctx, dqkv, dout, qkv, out, s.lse, masked_attention_shape(scratch), p,
                            key);
    return;
  }
  if (cp_.all_to_all) {
    all_to_all_attention_backward(step, s, scratch, rows_gathered);
    return;
  }
  // Chunk 1 (the later one) sees every key chunk 0 sees and more: its key/value gradient goes
  // straight into cp_dkv, chunk 0's into the staging buffer and is added on. The q columns of
  // cp_dkv and the k/v columns of dqkv stay zero, so one add joins them after the scatter.
  const int64_t T_global = cfg_.seq_length, c = cp_.chunk_length(T_global);
  const Tensor kv = scratch.cp_kv.reshape({B, T_global, W});
  const Tensor dkv = scratch.cp_dkv.reshape({B, T_global, W});
  const Tensor dkv0 = scratch.cp_staging.reshape({B, T_global, W});
  if (!rows_gathered) gather_sequence(ctx, cp_, B, T_global, kv, s.qkv, scratch.cp_staging);
  const ops::AttentionChunk late{c, c, cp_.chunk_position(1, T_global)};
  const ops::AttentionChunk early{0, c, cp_.chunk_position(0, T_global)};
  const int64_t keys0 = early.position + early.rows;  // rows chunk 0 writes (and adds on)
  auto rows0 = [&](const Tensor& t, int64_t b) {
    return t.flat_view(b * T_global * W, Shape({keys0 * W}));
  };
  ops::fill(ctx, dqkv, 0.0);
  ops::fill(ctx, dkv, 0.0);
  // Only chunk 0's rows of dkv0 are added on; their q columns must not hold gathered rows.
  for (int64_t b = 0; b < B; ++b) ops::fill(ctx, rows0(scratch.cp_staging, b), 0.0);
  ops::attention_chunk_backward(ctx, dqkv, dkv, dout, qkv, kv, out, s.lse, attention_shape(), late,
                                p, key);
  ops::attention_chunk_backward(ctx, dqkv, dkv0, dout, qkv, kv, out, s.lse, attention_shape(),
                                early, p, key);
  for (int64_t b = 0; b < B; ++b)
    ops::add_inplace(ctx, rows0(scratch.cp_dkv, b), rows0(scratch.cp_staging, b));
  const Tensor summed = scratch.cp_kv.flat_view(0, Shape({B * T * W}));  // kv is spent
  reduce_scatter_sequence(ctx, cp_, B, T_global, summed, scratch.cp_dkv, scratch.cp_staging);
  ops::add_inplace(ctx, scratch.qkv, summed.reshape(scratch.qkv.shape()));
}

void TransformerLayer::all_to_all_attention(StepContext& step, const Saved& s,
                                            const Scratch& scratch) const {
  // Every rank's tokens of this rank's share of the heads, in global order: the single-rank
  // attention of those heads, masks included (head_share_shape keys them by global head).
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), T = cfg_.seq_length;
  const ops::AttentionShape shape = head_share_shape();
  const AllToAllBuffers buf = all_to_all_buffers(scratch);
  all_to_all_index(ctx, cp_, B, T, buf.index);
  sequence_to_heads(ctx, cp_, B, T, scratch.cp_heads_qkv, s.qkv, buf);
  ops::attention_forward(ctx, scratch.cp_heads_out.reshape({B, T, scratch.cp_heads_out.size(1)}),
                         s.lse.reshape({B, shape.num_heads, T}),
                         scratch.cp_heads_qkv.reshape({B, T, scratch.cp_heads_qkv.size(1)}), shape,
                         attention_dropout(step),
                         step.dropout_key(index_, kDropoutAttentionProbs));
  heads_to_sequence(ctx, cp_, B, T, s.attn, scratch.cp_heads_out, buf);
}

void TransformerLayer::all_to_all_attention_backward(StepContext& step, const Saved& s,
                                                     const Scratch& scratch,
                                                     bool rows_exchanged) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), T = cfg_.seq_length;
  const int64_t W = scratch.cp_heads_qkv.size(1), A = scratch.cp_heads_out.size(1);
  const ops::AttentionShape shape = head_share_shape();
  const AllToAllBuffers buf = all_to_all_buffers(scratch);
  all_to_all_index(ctx, cp_, B, T, buf.index);
  if (!rows_exchanged) {  // forward's rows, unless the recompute just left them in scratch
    sequence_to_heads(ctx, cp_, B, T, scratch.cp_heads_qkv, s.qkv, buf);
    sequence_to_heads(ctx, cp_, B, T, scratch.cp_heads_out, s.attn, buf);
  }
  // dout and dqkv are exchanged in place: each buffer holds the rank's rows of all heads or
  // the whole sequence's rows of its share, the same number of elements.
  const Tensor dout = scratch.a.reshape({B, T, A});
  const Tensor dqkv = scratch.qkv.reshape({B, T, W});
  sequence_to_heads(ctx, cp_, B, T, dout, scratch.a, buf);
  ops::attention_backward(ctx, dqkv, dout, scratch.cp_heads_qkv.reshape({B, T, W}),
                          scratch.cp_heads_out.reshape({B, T, A}),
                          s.lse.reshape({B, shape.num_heads, T}), shape, attention_dropout(step),
                          step.dropout_key(index_, kDropoutAttentionProbs));
  heads_to_sequence(ctx, cp_, B, T, scratch.qkv, dqkv, buf);
}

void TransformerLayer::recompute_norm(DeviceContext& ctx, const Norm& norm,
                                      const Norm::Saved& stats, const Tensor& in,
                                      const SequenceRows& rows, const Scratch& scratch) const {
  // Into scratch.c1 (all rows); under SP the rank's rows go through c0, which is free here.
  const Tensor local = tp_.sp() ? scratch.c0.flat_view(0, Shape({rows.local(tp_), rows.hidden}))
                                : scratch.c1;
  norm.forward(ctx, local, stats, in);
  enter_column_region(ctx, tp_, rows, scratch.c1, local, scratch.staging);
}

void TransformerLayer::forward(StepContext& step, Tensor x_out, const Tensor& x,
                               const Saved& s, const Scratch& scratch) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), C = cfg_.hidden_size;
  const SequenceRows rows = sequence_rows(B);
  const int64_t NL = rows.local(tp_);
  // The rank's rows of a [N, C] scratch (all of it without sequence parallelism).
  auto local = [&](const Tensor& t) { return t.flat_view(0, Shape({NL, C})); };
  const bool sp = tp_.sp();
  const Fp8Workspace* fp8 = fp8_workspace(scratch);
  // Attention block. The norm outputs (all rows) live in scratch c1, which backward recomputes,
  // or in s.ln1 / s.ln2 when saved.
  const bool saved_outputs = s.ln1.defined();
  const Tensor ln1_full = saved_outputs ? s.ln1 : scratch.c1;
  const Tensor ln2_full = saved_outputs ? s.ln2 : scratch.c1;
  const Tensor ln1_local = sp ? local(scratch.c2) : ln1_full;
  const Tensor ln2_local = sp ? local(scratch.c2) : ln2_full;
  norm1_.forward(ctx, ln1_local, s.norm1, x);
  enter_column_region(ctx, tp_, rows, ln1_full, ln1_local, scratch.staging);
  qkv_.forward(ctx, s.qkv, ln1_full, fp8);
  apply_rope(ctx, s.qkv, scratch, B, /*backward=*/false);
  attention(step, s, scratch);
  proj_.forward(ctx, scratch.c0, s.attn, fp8);
  const Tensor proj_out = sp ? local(scratch.c3) : scratch.c0;
  exit_row_region(ctx, tp_, rows, proj_out, scratch.c0, scratch.staging);
  dropout_add_rows_forward(ctx, tp_, rows, s.x_mid, proj_out, x, hidden_dropout(step),
                           step.dropout_key(index_, kDropoutAttentionOutput));
  if (cross_) cross_attention_forward(step, s, scratch);
  const Tensor& mlp_in = mlp_input(s);
  // MLP block (the activation output is scratch too unless saved: backward recomputes it from
  // s.fc1).
  norm2_.forward(ctx, ln2_local, s.norm2, mlp_in);
  enter_column_region(ctx, tp_, rows, ln2_full, ln2_local, scratch.staging);
  if (moe_) {
    moe_->forward(step, scratch.c0, ln2_full, s.moe, scratch.moe);  // partial over TP
  } else {
    const Tensor act_out = saved_outputs ? s.act : scratch.act;
    if (cfg_.swiglu) {
      fc1_.forward(ctx, s.fc1, ln2_full, fp8);
      ops::swiglu_forward(ctx, act_out, s.fc1);
    } else {
      fc1_.forward_gelu(ctx, act_out, s.fc1, ln2_full, fp8);  // s.fc1 keeps the pre-activation
    }
    fc2_.forward(ctx, scratch.c0, act_out, fp8);
  }
  const Tensor fc2_out = sp ? local(scratch.c3) : scratch.c0;
  exit_row_region(ctx, tp_, rows, fc2_out, scratch.c0, scratch.staging);
  dropout_add_rows_forward(ctx, tp_, rows, x_out, fc2_out, mlp_in, hidden_dropout(step),
                           step.dropout_key(index_, kDropoutMlpOutput));
}

void TransformerLayer::mlp_backward(DeviceContext& ctx, const Tensor& d_in_full,
                                    const Tensor& d_out_full, const SequenceRows& rows,
                                    const Saved& s, const Scratch& scratch) const {
  // The activation output for fc2's weight gradient: saved, or recomputed into scratch.fc1,
  // which its gradient later overwrites.
  const bool saved_outputs = s.ln1.defined();
  const Fp8Workspace* fp8 = fp8_workspace(scratch);
  Tensor act = s.act;
  if (!saved_outputs) {
    act = scratch.fc1.flat_view(0, Shape({s.fc1.size(0), scratch.act.size(1)}));
    if (cfg_.swiglu)
      ops::swiglu_forward(ctx, act, s.fc1);
    else
      ops::gelu_forward(ctx, act, s.fc1);
  }
  fc2_.backward(ctx, scratch.act, d_out_full, act, fp8);
  // norm2's output for fc1's weight gradient: saved, or recomputed into scratch.c1
  // (re-gathered under SP, as Megatron).
  if (!saved_outputs) recompute_norm(ctx, norm2_, s.norm2, mlp_input(s), rows, scratch);
  const Tensor ln2_full = saved_outputs ? s.ln2 : scratch.c1;
  if (cfg_.swiglu) {
    ops::swiglu_backward(ctx, scratch.fc1, scratch.act, s.fc1);
    fc1_.backward(ctx, d_in_full, scratch.fc1, ln2_full, fp8);
  } else {
    fc1_.backward_from_gelu(ctx, d_in_full, scratch.fc1, scratch.act, s.fc1, ln2_full,
                              fp8);
  }
}

void TransformerLayer::backward(StepContext& step, Tensor dx, const Tensor& dx_out,
                                const Tensor& x, const Saved& s, const Scratch& scratch,
                                bool attention_recomputed) const {
  DeviceContext& ctx = step.device;
  const int64_t B = s.lse.size(0), C = cfg_.hidden_size;
  const SequenceRows rows = sequence_rows(B);
  const int64_t NL = rows.local(tp_);
  auto local = [&](const Tensor& t) { return t.flat_view(0, Shape({NL, C})); };
  const bool sp = tp_.sp();
  // [NL, C]: the rank's rows; [N, C]: all rows. Without TP every view is the whole buffer.
  const Tensor& d_norm_out_full = scratch.c2;  // norm-output gradient, partial over TP ranks
  const Tensor d_norm_out = sp ? local(scratch.c1) : scratch.c2;  // summed, the rank's rows
  const Tensor d_norm_in = local(scratch.c0);
  const Tensor d_mid = local(scratch.c3);
  // Sequence parallelism: the norms see only the rank's rows, so their gradients are partial
  // sums; collect them in sp_grads [norm1 | norm2], sum over TP at the end, then accumulate.
  Tensor g1, g2, g3;  // [norm1 | norm2 | cross-attention's norm]
  if (sp) {
    const int64_t n1 = norm1_.grad_numel(), n2 = norm2_.grad_numel();
    g1 = scratch.sp_grads.flat_view(0, Shape({n1}));
    g2 = scratch.sp_grads.flat_view(n1, Shape({n2}));
    if (cross_) g3 = scratch.sp_grads.flat_view(n1 + n2, Shape({cross_->norm.grad_numel()}));
    ops::fill(ctx, scratch.sp_grads, 0.0);
  }
  const Tensor& mlp_in = mlp_input(s);
  // MLP block: x_out = mlp_in + dropout(fc2(act(fc1(norm2(mlp_in))))), mlp_in = x_mid or x_cross.
  const Tensor d_mlp = branch_grad(step, dx_out, kDropoutMlpOutput, rows, scratch);
  const Tensor d_mlp_full = sp ? scratch.c1 : d_mlp;  // all rows (gathered under SP)
  exit_row_region_backward(ctx, tp_, rows, d_mlp_full, d_mlp, scratch.staging);
  const bool saved_outputs = s.ln1.defined();
  if (moe_) {  // d_mlp_full (scratch.c1 under SP) is consumed before the norm is recomputed
    const std::vector<int64_t> counts = moe_->backward_output(step, d_mlp_full, s.moe, scratch.moe);
    if (!saved_outputs) recompute_norm(ctx, norm2_, s.norm2, mlp_in, rows, scratch);
    moe_->backward_input(step, d_norm_out_full, saved_outputs ? s.ln2 : scratch.c1, counts, s.moe,
                         scratch.moe);
  } else {
    mlp_backward(ctx, d_norm_out_full, d_mlp_full, rows, s, scratch);
  }
  enter_column_region_backward(ctx, tp_, rows, d_norm_out, d_norm_out_full, scratch.staging);
  if (sp)
    norm2_.backward(ctx, d_norm_in, d_norm_out, mlp_in, s.norm2, norm2_.dweight_view(g2),
                    norm2_.dbias_view(g2));
  else
    norm2_.backward(ctx, d_norm_in, d_norm_out, mlp_in, s.norm2);
  ops::add(ctx, d_mid, dx_out, d_norm_in);  // residual stream
  if (cross_) cross_attention_backward(step, d_mid, s, scratch, g3);  // d_mid: of x_mid now
  // Attention block: x_mid = x + dropout(proj(attention(qkv(norm1(x))))).
  const Tensor d_attn = branch_grad(step, d_mid, kDropoutAttentionOutput, rows, scratch);
  const Tensor d_attn_full = sp ? scratch.c1 : d_attn;
  exit_row_region_backward(ctx, tp_, rows, d_attn_full, d_attn, scratch.staging);
  proj_.backward(ctx, scratch.a, d_attn_full, s.attn, fp8_workspace(scratch));
  // Nothing between the recompute and here touches the gathered rows (only attention does).
  attention_backward(step, s, scratch, attention_recomputed);
  apply_rope(ctx, scratch.qkv, scratch, B, /*backward=*/true);
  if (!saved_outputs) recompute_norm(ctx, norm1_, s.norm1, x, rows, scratch);
  const Tensor ln1_full = saved_outputs ? s.ln1 : scratch.c1;
  std::vector<Parameter*> qkv_params;
  qkv_.append_parameters(qkv_params);
  const ReplicatedKvGrads kv{&qkv_layout_, tp_.query_group, qkv_params[0],
                             qkv_params.size() > 1 ? qkv_params[1] : nullptr};
  kv.begin(ctx);  // replicated query groups: k/v gradients summed over the group's ranks
  qkv_.backward(ctx, d_norm_out_full, scratch.qkv, ln1_full, fp8_workspace(scratch));
  kv.finish(ctx);
  enter_column_region_backward(ctx, tp_, rows, d_norm_out, d_norm_out_full, scratch.staging);
  if (sp)
    norm1_.backward(ctx, d_norm_in, d_norm_out, x, s.norm1, norm1_.dweight_view(g1),
                    norm1_.dbias_view(g1));
  else
    norm1_.backward(ctx, d_norm_in, d_norm_out, x, s.norm1);
  ops::add(ctx, dx, d_mid, d_norm_in);
  if (sp) {
    tp_.group->all_reduce(scratch.sp_grads);
    norm1_.accumulate_grads(ctx, g1);
    norm2_.accumulate_grads(ctx, g2);
    if (cross_) cross_->norm.accumulate_grads(ctx, g3);
  }
}

Tensor TransformerLayer::branch_grad(StepContext& step, const Tensor& dout, uint32_t site,
                                     const SequenceRows& rows, const Scratch& scratch) const {
  const double p = hidden_dropout(step);
  if (p == 0.0) return dout;  // no copy
  const Tensor d_branch = scratch.c0.flat_view(0, Shape({rows.local(tp_), cfg_.hidden_size}));
  dropout_rows_backward(step.device, tp_, rows, d_branch, dout, p, step.dropout_key(index_, site));
  return d_branch;
}

}  // namespace shardlm::model
