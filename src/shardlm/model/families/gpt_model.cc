#include "shardlm/model/families/gpt_model.h"

#include <algorithm>
#include <string>

#include "shardlm/base/check.h"
#include "shardlm/model/host_values.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::model {

namespace {
constexpr char kWordEmbeddings[] = "embedding.word_embeddings.weight";
constexpr char kPositionEmbeddings[] = "embedding.position_embeddings.weight";
constexpr char kOutputLayer[] = "output_layer.weight";
constexpr char kTokentypeEmbeddings[] = "embedding.tokentype_embeddings.weight";

// The loss of a micro-batch is reduced on the host (host_values.h).
double masked_sum_on_host(DeviceContext& ctx, const Tensor& losses, const Tensor& mask) {
  const std::vector<double> l = host_values(ctx, losses), m = host_values(ctx, mask);
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += l[i] * m[i];
  return s;
}

// Token / target ids (int32, host) must be below the padded vocabulary V.
void check_ids_below(const char* what, const Tensor& ids, int64_t V) {
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    SHARDLM_REQUIRE(p[i] >= 0 && p[i] < V, ErrorKind::kInvalidArgument,
                    std::string("GPT forward: ") + what + " id " + std::to_string(p[i]) +
                        " at flat index " + std::to_string(i) + " is outside the vocabulary [0, " +
                        std::to_string(V) + "); check the tokenizer / --vocab-size");
}
}  // namespace

GPTModel::GPTModel(const TransformerConfig& cfg) : GPTModel(cfg, TensorParallel{}) {}

GPTModel::GPTModel(const TransformerConfig& cfg, const TensorParallel& tp)
    : GPTModel(cfg, tp, ModelChunk{}) {}

GPTModel::GPTModel(const TransformerConfig& cfg, const TensorParallel& tp, const ModelChunk& chunk,
                   const ContextParallel& cp, const ExpertParallel& ep)
    : cfg_(cfg),
      tp_(tp),
      cp_(cp),
      ep_(ep),
      chunk_(chunk),
      final_norm_("decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
                  cfg.hidden_size, cfg.normalization, cfg.norm_epsilon) {
  cfg_.validate();
  if (tp_.enabled()) {
    SHARDLM_REQUIRE(cfg_.tensor_model_parallel_size == tp_.size(), ErrorKind::kInvalidConfig,
                    "the model config has tensor_model_parallel_size " +
                        std::to_string(cfg_.tensor_model_parallel_size) +
                        " but the tensor-parallel group has " + std::to_string(tp_.size()) +
                        " ranks; set it to the group size (--tensor-model-parallel-size), "
                        "which also pads the vocabulary for the split");
    cfg_.validate_tensor_parallel(tp_.size(), tp_.sp());
    vocab_start_ = tp_.rank() * (cfg_.padded_vocab_size() / tp_.size());
    if (tp_.query_group == nullptr) {  // collective over TP; copies (the planning probe) share it
      query_group_ = split_query_group_replicas(*tp_.group,
                                                QkvLayout::of(cfg_, tp_.rank(), tp_.size()));
      tp_.query_group = query_group_.get();
    }
  }
  if (cp_.enabled()) {
    SHARDLM_REQUIRE(cfg_.seq_length % (2 * cp_.size()) == 0, ErrorKind::kInvalidConfig,
                    "--seq-length " + std::to_string(cfg_.seq_length) +
                        " is not divisible by 2 x --context-parallel-size " +
                        std::to_string(cp_.size()) +
                        " (each rank holds two load-balanced chunks of every sequence)");
    SHARDLM_REQUIRE(!tp_.sp() || local_seq_length() % tp_.size() == 0,
                    ErrorKind::kInvalidConfig,
                    "--sequence-parallel splits each rank's " + std::to_string(local_seq_length()) +
                        " positions (--seq-length / --context-parallel-size) over " +
                        std::to_string(tp_.size()) + " tensor-parallel ranks: not divisible");
  }
  cfg_.validate_fp8(tp_.size(), cp_.size());
  SHARDLM_REQUIRE(!cfg_.bert() || !cp_.enabled(), ErrorKind::kInvalidConfig,
                  "BERT runs bidirectional attention over the whole padded sequence: "
                  "--context-parallel-size " + std::to_string(cp_.size()) +
                      " is not supported for it (as in Megatron); use 1");
  if (chunk_.layer_end < 0) chunk_.layer_end = cfg_.num_layers;
  if (cfg_.bert() && chunk_.has_head) bert_.emplace(cfg_, tp_);
  SHARDLM_REQUIRE(0 <= chunk_.layer_begin && chunk_.layer_begin < chunk_.layer_end &&
                      chunk_.layer_end <= cfg_.num_layers,
                  ErrorKind::kInvalidConfig,
                  "GPT model chunk: layers [" + std::to_string(chunk_.layer_begin) + ", " +
                      std::to_string(chunk_.layer_end) + ") are not a non-empty range of the " +
                      std::to_string(cfg_.num_layers) + " layers (--num-layers)");
  // Global layer indices: names, init keys and dropout masks do not depend on the partition.
  for (int64_t i = chunk_.layer_begin; i < chunk_.layer_end; ++i)
    layers_.emplace_back(cfg_, i, tp_, cp_, ep_);
}

void GPTModel::register_parameters(ParameterRegistry& reg) const {
  const int64_t V = cfg_.padded_vocab_size(), C = cfg_.hidden_size;
  const bool tied = !cfg_.untie_embeddings_and_output_weights;
  // Vocab-parallel: rows [rank*V/TP, (rank+1)*V/TP) of the padded vocabulary. Its gradient
  // (the lookup's scatter-add, plus the output-layer GEMM when tied) may go straight into the
  // master gradient: gradient-accumulation fusion, as for the linear weights.
  auto word_embeddings = [&](PipelineTie tie) {
    ParameterSpec spec{kWordEmbeddings, {V, C}, tp_.split(0), true,
                       Init::normal(cfg_.init_method_std), tie};
    spec.fuse_main_grad = true;
    return spec;
  };
  if (chunk_.has_embedding) {
    const PipelineTie tie = tied && !chunk_.has_head ? PipelineTie::kPrimary : PipelineTie::kNone;
    reg.add(word_embeddings(tie));
    if (cfg_.position_embedding == PositionEmbedding::kLearnedAbsolute)
      reg.add({kPositionEmbeddings, {cfg_.max_positions(), C}, Split::none(), true,
               Init::normal(cfg_.init_method_std)});
    if (cfg_.num_tokentypes() > 0)
      reg.add({kTokentypeEmbeddings, {cfg_.num_tokentypes(), C}, Split::none(), true,
               Init::normal(cfg_.init_method_std)});
  }
  for (const TransformerLayer& layer : layers_) layer.register_parameters(reg);
  if (!chunk_.has_head) return;
  final_norm_.register_parameters(reg);
  if (!tied) {  // one weight-gradient GEMM per micro-batch: gradient-accumulation fusion applies
    ParameterSpec output{kOutputLayer, {V, C}, tp_.split(0), true,
                         Init::normal(cfg_.init_method_std)};
    output.fuse_main_grad = true;
    reg.add(output);
  }
  else if (!chunk_.has_embedding)  // the last stage's copy: same name, so the same init
    reg.add(word_embeddings(PipelineTie::kCopy));
  if (bert_) bert_->register_parameters(reg);
}

void GPTModel::bind(ParameterRegistry& reg) {
  const bool tied = !cfg_.untie_embeddings_and_output_weights;
  word_embeddings_ =
      chunk_.has_embedding || (chunk_.has_head && tied) ? &reg.get(kWordEmbeddings) : nullptr;
  position_embeddings_ = chunk_.has_embedding &&
                                 cfg_.position_embedding == PositionEmbedding::kLearnedAbsolute
                             ? &reg.get(kPositionEmbeddings)
                             : nullptr;
  tokentype_embeddings_ = chunk_.has_embedding && cfg_.num_tokentypes() > 0
                              ? &reg.get(kTokentypeEmbeddings)
                              : nullptr;
  for (TransformerLayer& layer : layers_) layer.bind(reg);
  if (chunk_.has_head) final_norm_.bind(reg);
  output_layer_ = chunk_.has_head && !tied ? &reg.get(kOutputLayer) : nullptr;
  if (bert_) bert_->bind(reg);
}

void GPTModel::set_activation_slots(int slots) {
  SHARDLM_REQUIRE(slots >= 1, ErrorKind::kInvalidArgument,
                  "GPT model: activation slots must be >= 1, got " + std::to_string(slots));
  num_slots_ = slots;
}

void GPTModel::select_slot(int slot) {
  SHARDLM_REQUIRE(slot >= 0 && static_cast<size_t>(slot) < slots_.size(),
                  ErrorKind::kInvalidArgument,
                  "GPT model: activation slot " + std::to_string(slot) + " of " +
                      std::to_string(slots_.size()) + " (allocate_activations first)");
  slot_ = static_cast<size_t>(slot);
}

Shape GPTModel::boundary_shape(int64_t micro_batch) const {
  const int64_t C = cfg_.hidden_size;
  return Shape({SequenceRows{micro_batch, local_seq_length(), C}.local(tp_), C});
}

size_t GPTModel::plan_activation_bytes(DType dtype, int64_t micro_batch) const {
  ArenaPlan plan;
  GPTModel probe(cfg_, tp_, chunk_, cp_, ep_);  // a copy, so planning never disturbs our views
  probe.set_recompute(recompute_);  // the layers' saved-output choice too
  probe.num_slots_ = num_slots_;
  probe.allocate_activations(plan, dtype, micro_batch);
  return plan.bytes();
}

void GPTModel::allocate_activations(TensorAllocator& alloc, DType dtype, int64_t micro_batch) {
  const int64_t N = micro_batch * local_seq_length(), C = cfg_.hidden_size;
  const int64_t VL = cfg_.padded_vocab_size() / tp_.size();
  const int64_t NL = SequenceRows{micro_batch, local_seq_length(), C}.local(tp_);
  const int64_t L = num_local_layers();
  micro_batch_ = micro_batch;
  // Vocab-parallel loss: per-row statistics in fp32 when activations are 16-bit (the global
  // lse cannot be recomputed from one shard in backward, so it must not be rounded to bf16).
  const bool low = dtype == DType::kBF16 || dtype == DType::kF16;
  const DType stats = tp_.enabled() && low ? DType::kF32 : dtype;
  // Shared by every slot: forward / backward temporaries and recomputation buffers (refilled
  // from the slot's stored layer inputs right before they are used).
  Activations shared;
  if (chunk_.has_embedding) shared.embedding = alloc.allocate(dtype, {N, C});
  if (recompute_.selective())
    shared.shared_attention = layers_.front().allocate_attention_output(alloc, dtype, micro_batch);
  for (int64_t s = 0; s < std::min(recompute_.slots(), L); ++s)
    shared.recompute_slots.push_back(layers_[s].allocate_saved(alloc, dtype, micro_batch));
  shared.scratch = TransformerLayer::allocate_scratch(cfg_, tp_, alloc, dtype, micro_batch, cp_, ep_);
  if (chunk_.has_head) {
    shared.dlosses = alloc.allocate(stats, {N});
    shared.dlogits = alloc.allocate(dtype, {N, VL});
    if (tp_.enabled()) {
      shared.row_max = alloc.allocate(stats, {N});
      shared.ce_partials = alloc.allocate(stats, {2, N});
    }
  }
  shared.dresidual0 = alloc.allocate(dtype, {NL, C});
  shared.dresidual1 = alloc.allocate(dtype, {NL, C});
  if (bert_) shared.bert_scratch = bert_->allocate_scratch(alloc, dtype, micro_batch, N);
  if (chunk_.has_embedding && cfg_.num_tokentypes() > 0 && tp_.sp())
    shared.tokentype_grad = alloc.allocate(dtype, {cfg_.num_tokentypes(), C});
  std::vector<Activations> slots;
  for (int slot = 0; slot < num_slots_; ++slot) {
    Activations a = shared;
    for (int64_t l = 0; l <= L; ++l) a.residual.push_back(alloc.allocate(dtype, {NL, C}));
    for (int64_t l = 0; l < L; ++l) {
      const TransformerLayer& layer = layers_[l];
      if (recompute_.recomputes_layer(l)) {
        a.layers.push_back(a.recompute_slots[l - recompute_.chunk_of(l, L).first]);
      } else {
        a.layers.push_back(layer.allocate_saved(
            alloc, dtype, micro_batch, recompute_.selective() ? &a.shared_attention : nullptr));
      }
    }
    if (chunk_.has_head) {
      a.final_norm = alloc.allocate(dtype, {N, C});
      a.final_norm_saved = final_norm_.allocate_saved(alloc, dtype, NL);
      a.logits = alloc.allocate(dtype, {N, VL});
      a.lse = alloc.allocate(stats, {N});
      a.losses = alloc.allocate(stats, {N});
    }
    if (bert_) {
      a.head_input = alloc.allocate(dtype, {N, C});
      a.bert = bert_->allocate_saved(alloc, dtype, micro_batch, N);
    }
    slots.push_back(std::move(a));
  }
  slots_ = std::move(slots);
  slot_ = 0;
}

Tensor GPTModel::output_weight() const { return output_parameter()->compute_value; }
Parameter* GPTModel::output_parameter() const {
  return output_layer_ ? output_layer_ : word_embeddings_;
}

void GPTModel::set_recompute(const RecomputeConfig& recompute) {
  recompute.validate(cfg_.num_layers);
  recompute_ = recompute;
  for (TransformerLayer& layer : layers_) layer.set_save_norm_activation(!recompute.norm_activation);
}

void GPTModel::report_grads_ready(std::span<Parameter* const> params) const {
  if (grad_ready_ && !params.empty()) grad_ready_(params);
}

void GPTModel::embedding_forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = local_seq_length(), C = cfg_.hidden_size;
  const double p = step.training ? cfg_.hidden_dropout : 0.0;
  const DropoutKey key = step.dropout_key(0, kDropoutEmbedding);
  Activations& a = acts();
  if (!tp_.enabled() && !cp_.enabled()) {
    ops::embedding_forward(ctx, a.embedding.reshape({B, T, C}), batch.tokens,
                           word_embeddings_->compute_value,
                           position_embeddings_ ? position_embeddings_->compute_value : Tensor());
    if (tokentype_embeddings_) add_tokentype_embeddings(ctx, batch, a.embedding);
    ops::dropout_forward(ctx, a.residual[0], a.embedding, p, key, 0);
    return;
  }
  // Vocab-parallel lookup (zero rows for ids of other shards), summed over TP: all-reduce, or
  // reduce-scatter into the rank's sequence shard; then the positions of the rank's rows (the
  // path context parallelism takes too, for its global positions).
  const SequenceRows rows = sequence_rows();
  const int64_t NL = rows.local(tp_);
  ops::vocab_parallel_embedding_forward(ctx, a.embedding, batch.tokens,
                                        word_embeddings_->compute_value, vocab_start_);
  const Tensor local = tp_.sp() ? a.scratch.c0.flat_view(0, Shape({NL, C})) : a.embedding;
  exit_row_region(ctx, tp_, rows, local, a.embedding, a.scratch.staging);
  if (position_embeddings_) add_position_embeddings(ctx, local);
  if (tokentype_embeddings_) add_tokentype_embeddings(ctx, batch, local);
  dropout_rows_forward(ctx, tp_, rows, a.residual[0], local, p, key);
}

void GPTModel::add_position_embeddings(DeviceContext& ctx, const Tensor& local) const {
  const int64_t C = cfg_.hidden_size;
  const Tensor& wpe = position_embeddings_->compute_value;
  for_each_position_block(tp_, sequence_rows(),
                          [&](int64_t /*b*/, int64_t row, int64_t n, int64_t position) {
                            ops::add_inplace(ctx, local.flat_view(row * C, Shape({n, C})),
                                             wpe.flat_view(position * C, Shape({n, C})));
                          });
}

void GPTModel::position_embedding_backward(DeviceContext& ctx, const Tensor& d_local) {
  // Rows of the table get the sum over sequences of the gradient at each position. Sequence
  // parallelism: each rank has positions [t0, t0 + TL) of the local sequence only; sum its
  // sequences into a [TL, C] block, all-gather the blocks into [T, C] (rank order = position
  // order), then add each run of local positions to its global rows.
  const SequenceRows rows = sequence_rows();
  const int64_t C = cfg_.hidden_size, T = rows.seq, TL = positions_per_rank(tp_, rows);
  Activations& a = acts();
  Tensor per_position = d_local;  // [B, T, C] without SP: sum the sequences per run below
  int64_t sequences = rows.batch;
  if (tp_.sp()) {
    const Tensor block = a.scratch.c1.flat_view(0, Shape({TL, C}));
    per_position = a.scratch.c2.flat_view(0, Shape({T, C}));
    ops::fill(ctx, block, 0.0);
    for (int64_t b = 0; b < rows.batch; ++b)
      ops::add_inplace(ctx, block, d_local.flat_view(b * TL * C, Shape({TL, C})));
    tp_.group->all_gather(per_position, block);
    sequences = 1;
  }
  const Tensor& dwpe = position_embeddings_->compute_grad;
  for (const PositionRun& run : position_runs(cp_, cfg_.seq_length, 0, T))
    for (int64_t b = 0; b < sequences; ++b)
      ops::add_inplace(ctx, dwpe.flat_view(run.global * C, Shape({run.count, C})),
                       per_position.flat_view((b * T + run.local) * C, Shape({run.count, C})));
}

void GPTModel::add_tokentype_embeddings(DeviceContext& ctx, const Batch& batch,
                                        const Tensor& local) {
  const int64_t C = cfg_.hidden_size, T = local_seq_length();
  SHARDLM_REQUIRE(batch.token_types.defined() &&
                      batch.token_types.shape() == Shape({micro_batch_, T}),
                  ErrorKind::kInvalidArgument,
                  "BERT forward: token_types must be int32 [micro-batch, seq-length] = " +
                      Shape({micro_batch_, T}).to_string() + " (the binary head's segments)");
  // Looked up into scratch, then added (the table is tiny): all rows at once, or under SP per
  // block of the rank's rows.
  const Tensor types = acts().scratch.c1.flat_view(0, local.shape());
  const Tensor& table = tokentype_embeddings_->compute_value;
  if (!tp_.sp()) {
    ops::embedding_forward(ctx, types.reshape({micro_batch_, T, C}), batch.token_types, table,
                           Tensor());
  } else {
    for_each_position_block(tp_, sequence_rows(), [&](int64_t b, int64_t row, int64_t n,
                                                      int64_t position) {
      ops::embedding_forward(ctx, types.flat_view(row * C, Shape({1, n, C})),
                             batch.token_types.flat_view(b * T + position, Shape({1, n})), table,
                             Tensor());
    });
  }
  ops::add_inplace(ctx, local, types);
}

void GPTModel::tokentype_embedding_backward(DeviceContext& ctx, const Batch& batch,
                                            const Tensor& d_local) {
  const int64_t C = cfg_.hidden_size, T = local_seq_length();
  // Under SP each rank saw only its rows: this micro-batch's gradient is summed over TP first.
  if (!tp_.sp()) {
    ops::embedding_backward(ctx, tokentype_embeddings_->compute_grad, Tensor(),
                            d_local.reshape({micro_batch_, T, C}), batch.token_types);
    return;
  }
  const Tensor grad = acts().tokentype_grad;
  ops::fill(ctx, grad, 0.0);
  for_each_position_block(tp_, sequence_rows(), [&](int64_t b, int64_t row, int64_t n,
                                                    int64_t position) {
    ops::embedding_backward(ctx, grad, Tensor(), d_local.flat_view(row * C, Shape({1, n, C})),
                            batch.token_types.flat_view(b * T + position, Shape({1, n})));
  });
  tp_.group->all_reduce(grad);
  ops::add_inplace(ctx, tokentype_embeddings_->compute_grad, grad);
}

Tensor GPTModel::take_word_embedding_grad(DeviceContext& ctx) const {
  if (!word_embeddings_->main_grad_fused) return word_embeddings_->compute_grad;
  // Fused: the lookup's scatter-add adds into the master gradient. As the step's first
  // contribution (untied, or the pipeline's first stage; tied in one chunk the head's GEMM
  // assigned before) it finds an earlier step's values there, which it cannot overwrite row by
  // row: zero them first.
  const Parameter::FusedMainGrad main = word_embeddings_->take_fused_main_grad();
  if (!main.accumulate) ops::fill(ctx, main.grad, 0.0);
  return main.grad;
}

void GPTModel::embedding_backward(StepContext& step, const Batch& batch, const Tensor& dres) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = local_seq_length(), C = cfg_.hidden_size;
  const double p = step.training ? cfg_.hidden_dropout : 0.0;
  const DropoutKey key = step.dropout_key(0, kDropoutEmbedding);
  Activations& a = acts();
  if (!tp_.enabled() && !cp_.enabled()) {
    ops::dropout_backward(ctx, a.scratch.c0, dres, p, key, 0);
    ops::embedding_backward(ctx, take_word_embedding_grad(ctx),
                            position_embeddings_ ? position_embeddings_->compute_grad : Tensor(),
                            a.scratch.c0.reshape({B, T, C}), batch.tokens);
    if (tokentype_embeddings_) {
      tokentype_embedding_backward(ctx, batch, a.scratch.c0);
      report_grads_ready({&tokentype_embeddings_, 1});
    }
    if (position_embeddings_) report_grads_ready({&position_embeddings_, 1});
    report_grads_ready({&word_embeddings_, 1});
    return;
  }
  const SequenceRows rows = sequence_rows();
  const int64_t NL = rows.local(tp_);
  const Tensor d_local = a.scratch.c0.flat_view(0, Shape({NL, C}));
  dropout_rows_backward(ctx, tp_, rows, d_local, dres, p, key);
  if (tokentype_embeddings_) {
    tokentype_embedding_backward(ctx, batch, d_local);
    report_grads_ready({&tokentype_embeddings_, 1});
  }
  if (position_embeddings_) {
    position_embedding_backward(ctx, d_local);
    report_grads_ready({&position_embeddings_, 1});
  }
  const Tensor d_full = tp_.sp() ? a.scratch.c3 : d_local;
  exit_row_region_backward(ctx, tp_, rows, d_full, d_local, a.scratch.staging);
  ops::vocab_parallel_embedding_backward(ctx, take_word_embedding_grad(ctx), d_full,
                                         batch.tokens, vocab_start_);
  report_grads_ready({&word_embeddings_, 1});
}

void GPTModel::head_forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t N = micro_batch_ * local_seq_length(), C = cfg_.hidden_size;
  Activations& a = acts();
  const Tensor targets = batch.targets.reshape({N});
  const Tensor bias = bert_ ? bert_->output_bias()->compute_value : Tensor();
  if (bert_) {
    bert_head_forward(step, batch);
  } else if (!tp_.enabled()) {
    final_norm_.forward(ctx, a.final_norm, a.final_norm_saved, a.residual.back());
  } else {
    const SequenceRows rows = sequence_rows();
    const int64_t NL = rows.local(tp_);
    const Tensor norm_local =
        tp_.sp() ? a.scratch.c2.flat_view(0, Shape({NL, C})) : a.final_norm;
    final_norm_.forward(ctx, norm_local, a.final_norm_saved, a.residual.back());
    enter_column_region(ctx, tp_, rows, a.final_norm, norm_local, a.scratch.staging);
  }
  ops::linear_forward(ctx, a.logits, a.final_norm, output_weight(), bias);
  if (!tp_.enabled()) {
    ops::cross_entropy_forward(ctx, a.losses, a.lse, a.logits, targets);
    return;
  }
  // Vocab-parallel cross-entropy: global max, then sum-exp and target logit summed over TP.
  const Tensor sum_exp = a.ce_partials.flat_view(0, Shape({N}));
  const Tensor target_logit = a.ce_partials.flat_view(N, Shape({N}));
  ops::vocab_parallel_cross_entropy_max(ctx, a.row_max, a.logits);
  tp_.group->all_reduce(a.row_max, dist::ReduceOp::kMax);
  ops::vocab_parallel_cross_entropy_partials(ctx, sum_exp, target_logit, a.logits, targets,
                                             a.row_max, vocab_start_);
  tp_.group->all_reduce(a.ce_partials);
  ops::vocab_parallel_cross_entropy_loss(ctx, a.losses, a.lse, a.row_max, sum_exp, target_logit);
}

void GPTModel::head_backward(StepContext& step, const Batch& batch, double loss_scale,
                             const Tensor& dres) {
  DeviceContext& ctx = step.device;
  const int64_t N = micro_batch_ * local_seq_length(), C = cfg_.hidden_size;
  Activations& a = acts();
  const Tensor targets = batch.targets.reshape({N});
  // d(sum(l*m)/mask_sum * scale)/dl = m * scale / mask_sum
  ops::copy(ctx, a.dlosses, batch.loss_mask.reshape({N}));
  ops::scale_inplace(ctx, a.dlosses, loss_scale / batch.mask_sum);
  if (tp_.enabled())
    ops::vocab_parallel_cross_entropy_backward(ctx, a.dlogits, a.dlosses, a.logits, targets, a.lse,
                                               vocab_start_);
  else
    ops::cross_entropy_backward(ctx, a.dlogits, a.dlosses, a.logits, targets, a.lse);
  // Output layer: column-parallel over the vocabulary; its input gradient is partial over TP.
  // Its weight (untied, or the tied word embedding) is fused: straight into the main gradient.
  Parameter* const out = output_parameter();
  const Tensor dbias = bert_ ? bert_->output_bias()->compute_grad : Tensor();
  if (out->main_grad_fused) {
    ops::linear_backward(ctx, a.scratch.c0, Tensor(), dbias, a.dlogits, a.final_norm,
                         out->compute_value);
    const Parameter::FusedMainGrad main = out->take_fused_main_grad();
    ops::linear_weight_grad(ctx, main.grad, a.dlogits, a.final_norm, main.accumulate);
  } else {
    ops::linear_backward(ctx, a.scratch.c0, out->compute_grad, dbias, a.dlogits, a.final_norm,
                         out->compute_value);
  }
  const SequenceRows rows = sequence_rows();
  const int64_t NL = rows.local(tp_);
  Tensor d_norm = tp_.sp() ? a.scratch.c1.flat_view(0, Shape({NL, C})) : a.scratch.c0;
  if (bert_) {
    // The LM head's parameters were registered after the output layer: reported before it.
    d_norm = bert_head_backward(step, batch, loss_scale, a.scratch.c0);
  }
  if (output_layer_) report_grads_ready({&output_layer_, 1});
  // The last pipeline stage's tied copy is complete here (the first stage's reports later).
  if (!output_layer_ && !chunk_.has_embedding) report_grads_ready({&word_embeddings_, 1});
  if (!bert_) enter_column_region_backward(ctx, tp_, rows, d_norm, a.scratch.c0, a.scratch.staging);
  if (tp_.sp()) {
    // The final norm saw only this rank's rows: sum its gradients over TP before reporting.
    const Tensor g = a.scratch.sp_grads.flat_view(0, Shape({final_norm_.grad_numel()}));
    ops::fill(ctx, g, 0.0);
    final_norm_.backward(ctx, dres, d_norm, a.residual.back(), a.final_norm_saved,
                         final_norm_.dweight_view(g), final_norm_.dbias_view(g));
    tp_.group->all_reduce(g);
    final_norm_.accumulate_grads(ctx, g);
  } else {
    final_norm_.backward(ctx, dres, d_norm, a.residual.back(), a.final_norm_saved);
  }
  std::vector<Parameter*> ready;
  final_norm_.append_parameters(ready);
  std::reverse(ready.begin(), ready.end());
  report_grads_ready(ready);
}

void GPTModel::bert_head_forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = local_seq_length(), C = cfg_.hidden_size;
  Activations& a = acts();
  const SequenceRows rows = sequence_rows();
  const Tensor norm_local =
      tp_.sp() ? a.scratch.c2.flat_view(0, Shape({rows.local(tp_), C})) : a.head_input;
  final_norm_.forward(ctx, norm_local, a.final_norm_saved, a.residual.back());
  if (tp_.sp()) enter_column_region(ctx, tp_, rows, a.head_input, norm_local, a.scratch.staging);
  bert_->lm_transform_forward(ctx, a.final_norm, a.head_input, a.bert);
  a.sop_loss = 0;
  if (!cfg_.has_binary_head()) return;
  SHARDLM_REQUIRE(batch.sentence_order.defined() && batch.sentence_order.numel() == B,
                  ErrorKind::kInvalidArgument,
                  "BERT forward: the binary head needs sentence_order int32 [micro-batch] = [" +
                      std::to_string(B) + "] (or train with --bert-no-binary-head)");
  a.sop_loss = bert_->binary_forward(ctx, a.head_input, B, T, batch.sentence_order, a.bert) /
               static_cast<double>(B);
}

Tensor GPTModel::bert_head_backward(StepContext& step, const Batch& batch, double loss_scale,
                                    const Tensor& d_lm_out) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = local_seq_length(), C = cfg_.hidden_size;
  Activations& a = acts();
  auto report_reversed = [&](std::vector<Parameter*> params) {
    std::reverse(params.begin(), params.end());
    report_grads_ready(params);
  };
  // The binary head (registered last) first: d(scale * mean_b loss_b) into bert_scratch.dcls.
  if (cfg_.has_binary_head()) {
    bert_->binary_backward(ctx, a.bert_scratch, B, batch.sentence_order,
                           loss_scale / static_cast<double>(B), a.bert);
    report_reversed(bert_->binary_parameters());
  }
  // The output layer's input gradient is partial over TP (vocab-split): complete it on every
  // rank, which then runs the replicated LM transform on all rows.
  if (tp_.enabled()) tp_.group->all_reduce(d_lm_out);
  const Tensor d_input = a.scratch.c3;  // [N, C]: d(head_input), all rows
  bert_->lm_transform_backward(ctx, d_input, d_lm_out, a.head_input, a.bert, a.bert_scratch);
  if (cfg_.has_binary_head()) bert_->add_first_token_grads(ctx, d_input, B, T, a.bert_scratch);
  report_reversed(bert_->lm_parameters());
  if (!tp_.sp()) return d_input;
  // Sequence parallelism: the final norm ran on this rank's rows only.
  const Tensor d_local = a.scratch.c1.flat_view(0, Shape({sequence_rows().local(tp_), C}));
  for_each_position_block(tp_, sequence_rows(), [&](int64_t b, int64_t row, int64_t n,
                                                    int64_t position) {
    ops::copy(ctx, d_local.flat_view(row * C, Shape({n, C})),
              d_input.flat_view((b * T + position) * C, Shape({n, C})));
  });
  return d_local;
}

double GPTModel::forward(StepContext& step, const Batch& batch) {
  return forward(step, batch, 0, Tensor(), Tensor());
}

void GPTModel::backward(StepContext& step, const Batch& batch, double loss_scale) {
  backward(step, batch, 0, loss_scale, Tensor(), Tensor());
}

double GPTModel::forward(StepContext& step, const Batch& batch, int slot, const Tensor& input,
                         const Tensor& output) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, T = local_seq_length(), N = B * T;
  select_slot(slot);
  Activations& a = acts();
  const Shape boundary = a.residual.front().shape();
  if (chunk_.has_embedding) {
    SHARDLM_REQUIRE(batch.tokens.shape() == Shape({B, T}), ErrorKind::kInvalidArgument,
                    "GPT forward: tokens " + batch.tokens.shape().to_string() +
                        " must be [micro-batch, seq-length] = " + Shape({B, T}).to_string());
    // No rank sees the whole vocabulary under TP, so the ops cannot range-check ids; do it here.
    if (tp_.enabled() && batch.tokens.device().is_cpu())
      check_ids_below("tokens", batch.tokens, cfg_.padded_vocab_size());
  } else {
    SHARDLM_REQUIRE(input.defined() && input.shape() == boundary, ErrorKind::kInvalidArgument,
                    "GPT forward: a chunk without the embedding needs its input hidden state " +
                        boundary.to_string());
  }
  if (chunk_.has_head) {
    SHARDLM_REQUIRE(batch.targets.shape() == Shape({B, T}), ErrorKind::kInvalidArgument,
                    "GPT forward: targets " + batch.targets.shape().to_string() +
                        " must be [micro-batch, seq-length] = " + Shape({B, T}).to_string());
    SHARDLM_REQUIRE(batch.mask_sum > 0, ErrorKind::kInvalidArgument,
                    "GPT forward: the loss mask of this micro-batch is all zero");
    if (tp_.enabled() && batch.targets.device().is_cpu())
      check_ids_below("targets", batch.targets, cfg_.padded_vocab_size());
  } else {
    SHARDLM_REQUIRE(output.defined() && output.shape() == boundary, ErrorKind::kInvalidArgument,
                    "GPT forward: a chunk without the head needs an output buffer " +
                        boundary.to_string());
  }
  if (chunk_.has_embedding) {
    if (params_needed_) {
      std::vector<Parameter*> embeddings{word_embeddings_};
      if (position_embeddings_) embeddings.push_back(position_embeddings_);
      if (tokentype_embeddings_) embeddings.push_back(tokentype_embeddings_);
      params_needed_(embeddings);
    }
    embedding_forward(step, batch);
  } else {
    ops::copy(ctx, a.residual[0], input);
  }
  a.scratch.key_lengths = batch.key_lengths;
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (params_needed_) params_needed_(layers_[l].parameters());
    layers_[l].forward(step, a.residual[l + 1], a.residual[l], a.layers[l], a.scratch);
  }
  if (!chunk_.has_head) {
    ops::copy(ctx, output, a.residual.back());
    return 0.0;
  }
  if (params_needed_) {
    std::vector<Parameter*> head;
    final_norm_.append_parameters(head);
    head.push_back(output_layer_ ? output_layer_ : word_embeddings_);  // tied: the embedding
    if (bert_) {
      for (Parameter* p : bert_->lm_parameters()) head.push_back(p);
      for (Parameter* p : bert_->binary_parameters()) head.push_back(p);
    }
    params_needed_(head);
  }
  head_forward(step, batch);
  if (step.sop_loss) *step.sop_loss += a.sop_loss;
  return masked_sum_on_host(ctx, a.losses, batch.loss_mask.reshape({N})) / batch.mask_sum +
         a.sop_loss;
}

void GPTModel::backward(StepContext& step, const Batch& batch, int slot, double loss_scale,
                        const Tensor& output_grad, const Tensor& input_grad) {
  select_slot(slot);
  Activations& a = acts();
  step.loss_grad_scale = loss_scale;  // MoE load-balancing gradients scale with the loss
  step.moe_aux_loss = nullptr;        // a recompute pass adds nothing to the log
  step.moe_z_loss = nullptr;
  a.scratch.key_lengths = batch.key_lengths;
  Tensor dres = a.dresidual0, dnext = a.dresidual1;
  if (chunk_.has_head) {
    head_backward(step, batch, loss_scale, dres);
  } else {
    SHARDLM_REQUIRE(output_grad.defined() && output_grad.shape() == dres.shape(),
                    ErrorKind::kInvalidArgument,
                    "GPT backward: a chunk without the head needs its output gradient " +
                        dres.shape().to_string());
    ops::copy(step.device, dres, output_grad);
  }
  const int64_t L = num_local_layers();
  std::vector<Parameter*> ready;
  for (size_t l = layers_.size(); l-- > 0;) {
    const int64_t li = static_cast<int64_t>(l);
    if (recompute_.recomputes_layer(li)) {
      // Entering a recomputed chunk from its last layer: re-run the chunk's forward from its
      // stored input (same dropout masks), refilling the chunk's activation slots.
      const auto [begin, end] = recompute_.chunk_of(li, L);
      if (li == end - 1)
        for (int64_t j = begin; j < end; ++j)
          layers_[j].forward(step, a.residual[j + 1], a.residual[j], a.layers[j], a.scratch);
    }
    const bool attention_recomputed = !recompute_.recomputes_layer(li) && recompute_.selective();
    if (attention_recomputed) layers_[l].recompute_attention(step, a.layers[l], a.scratch);
    layers_[l].backward(step, dnext, dres, a.residual[l], a.layers[l], a.scratch,
                        attention_recomputed);
    std::swap(dres, dnext);
    ready = layers_[l].parameters();
    std::reverse(ready.begin(), ready.end());
    report_grads_ready(ready);
  }
  if (chunk_.has_embedding) {
    embedding_backward(step, batch, dres);
    return;
  }
  SHARDLM_REQUIRE(input_grad.defined() && input_grad.shape() == dres.shape(),
                  ErrorKind::kInvalidArgument,
                  "GPT backward: a chunk without the embedding needs an input-gradient buffer " +
                      dres.shape().to_string());
  ops::copy(step.device, input_grad, dres);
}

}  // namespace shardlm::model
