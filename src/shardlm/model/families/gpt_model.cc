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
constexpr char kT5OutputBias[] = "lm_head.output_layer.bias";

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
    : model_cfg_(cfg),
      cfg_(cfg.t5() ? cfg.stack_config(T5Stack::kDecoder) : cfg),
      tp_(tp),
      cp_(cp),
      ep_(ep),
      chunk_(chunk),
      final_norm_("decoder.final_layernorm.weight", "decoder.final_layernorm.bias",
                  cfg.hidden_size, cfg.normalization, cfg.norm_epsilon) {
  model_cfg_.validate();  // T5: the model-level flags first (cfg_ is the decoder's copy)
  cfg_.validate();
  if (cfg_.t5()) {
    encoder_cfg_ = cfg.stack_config(T5Stack::kEncoder);
    encoder_cfg_.validate();
    SHARDLM_REQUIRE(chunk.has_embedding && chunk.has_head && chunk.layer_begin == 0 &&
                        (chunk.layer_end < 0 || chunk.layer_end == cfg_.num_layers),
                    ErrorKind::kInvalidConfig,
                    "T5 runs its encoder and decoder in one pipeline stage here: "
                    "--pipeline-model-parallel-size must be 1 for --model-type t5");
    SHARDLM_REQUIRE(!cp.enabled(), ErrorKind::kInvalidConfig,
                    "T5 attends over whole padded sequences: --context-parallel-size " +
                        std::to_string(cp.size()) +
                        " is not supported for --model-type t5 (as in Megatron); use 1");
  }
  if (tp_.enabled()) {
    SHARDLM_REQUIRE(cfg_.tensor_model_parallel_size == tp_.size(), ErrorKind::kInvalidConfig,
                    "the model config has tensor_model_parallel_size " +
                        std::to_string(cfg_.tensor_model_parallel_size) +
                        " but the tensor-parallel group has " + std::to_string(tp_.size()) +
                        " ranks; set it to the group size (--tensor-model-parallel-size), "
                        "which also pads the vocabulary for the split");
    cfg_.validate_tensor_parallel(tp_.size(), tp_.sp());
    if (cfg_.t5()) encoder_cfg_.validate_tensor_parallel(tp_.size(), tp_.sp());
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
  if (cfg_.t5()) {
    for (int64_t i = 0; i < encoder_cfg_.num_layers; ++i)
      encoder_layers_.emplace_back(encoder_cfg_, i, tp_, cp_, ep_);
    encoder_final_norm_.emplace("encoder.final_layernorm.weight", "encoder.final_layernorm.bias",
                                cfg_.hidden_size, cfg_.normalization, cfg_.norm_epsilon);
  }
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
  for (const TransformerLayer& layer : encoder_layers_) layer.register_parameters(reg);
  if (encoder_final_norm_) encoder_final_norm_->register_parameters(reg);
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
  if (cfg_.t5())  // Megatron's T5LMHead: the tied output layer has a (vocab-split) bias
    reg.add({kT5OutputBias, {cfg_.padded_vocab_size()}, tp_.split(0), false, Init::zeros()});
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
  for (TransformerLayer& layer : encoder_layers_) layer.bind(reg);
  if (encoder_final_norm_) encoder_final_norm_->bind(reg);
  for (TransformerLayer& layer : layers_) layer.bind(reg);
  if (chunk_.has_head) final_norm_.bind(reg);
  t5_output_bias_ = cfg_.t5() ? &reg.get(kT5OutputBias) : nullptr;
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
  GPTModel probe(model_cfg_, tp_, chunk_, cp_, ep_);  // a copy: planning never disturbs our views
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
  const int64_t LE = static_cast<int64_t>(encoder_layers_.size());
  const int64_t NE = micro_batch * encoder_cfg_.seq_length;
  const int64_t NLE = encoder_rows().local(tp_);
  if (cfg_.t5()) {
    shared.enc_embedding = alloc.allocate(dtype, {NE, C});
    shared.enc_scratch = TransformerLayer::allocate_scratch(encoder_cfg_, tp_, alloc, dtype,
                                                            micro_batch, cp_, ep_);
    shared.d_enc_output = alloc.allocate(dtype, {NE, C});
    shared.enc_dresidual0 = alloc.allocate(dtype, {NLE, C});
    shared.enc_dresidual1 = alloc.allocate(dtype, {NLE, C});
    if (recompute_.selective())
      shared.enc_shared_attention =
          encoder_layers_.front().allocate_attention_output(alloc, dtype, micro_batch);
    for (int64_t s = 0; s < std::min(recompute_.slots(), LE); ++s)
      shared.enc_recompute_slots.push_back(
          encoder_layers_[s].allocate_saved(alloc, dtype, micro_batch));
  }
  // A stack's saved activations: recomputed layers alias a recompute slot.
  auto allocate_stack = [&](const std::vector<TransformerLayer>& layers,
                            std::vector<TransformerLayer::Saved>& recompute_slots,
                            TransformerLayer::Saved& shared_attention) {
    std::vector<TransformerLayer::Saved> saved;
    const int64_t n = static_cast<int64_t>(layers.size());
    for (int64_t l = 0; l < n; ++l) {
      if (recompute_.recomputes_layer(l))
        saved.push_back(recompute_slots[l - recompute_.chunk_of(l, n).first]);
      else
        saved.push_back(layers[l].allocate_saved(
            alloc, dtype, micro_batch, recompute_.selective() ? &shared_attention : nullptr));
    }
    return saved;
  };
  std::vector<Activations> slots;
  for (int slot = 0; slot < num_slots_; ++slot) {
    Activations a = shared;
    for (int64_t l = 0; l <= L; ++l) a.residual.push_back(alloc.allocate(dtype, {NL, C}));
    a.layers = allocate_stack(layers_, a.recompute_slots, a.shared_attention);
    if (cfg_.t5()) {
      for (int64_t l = 0; l <= LE; ++l)
        a.enc_residual.push_back(alloc.allocate(dtype, {NLE, C}));
      a.enc_layers = allocate_stack(encoder_layers_, a.enc_recompute_slots,
                                    a.enc_shared_attention);
      a.enc_final_norm_saved = encoder_final_norm_->allocate_saved(alloc, dtype, NLE);
      a.enc_output = alloc.allocate(dtype, {NE, C});
      // The decoder layers' cross-attention reads these (the lengths come with each batch).
      a.scratch.encoder_output = a.enc_output;
      a.scratch.d_encoder_output = a.d_enc_output;
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
Parameter* GPTModel::output_bias() const {
  if (bert_) return bert_->output_bias();
  return t5_output_bias_;
}
Parameter* GPTModel::output_parameter() const {
  return output_layer_ ? output_layer_ : word_embeddings_;
}

void GPTModel::set_recompute(const RecomputeConfig& recompute) {
  recompute.validate(cfg_.num_layers);
  if (cfg_.t5()) recompute.validate(encoder_cfg_.num_layers);  // both stacks recompute alike
  recompute_ = recompute;
  for (TransformerLayer& layer : layers_) layer.set_save_norm_activation(!recompute.norm_activation);
  for (TransformerLayer& layer : encoder_layers_)
    layer.set_save_norm_activation(!recompute.norm_activation);
}

void GPTModel::report_grads_ready(std::span<Parameter* const> params) const {
  if (grad_ready_ && !params.empty()) grad_ready_(params);
}

void GPTModel::head_forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t N = micro_batch_ * local_seq_length(), C = cfg_.hidden_size;
  Activations& a = acts();
  const Tensor targets = batch.targets.reshape({N});
  const Parameter* const bias_param = output_bias();
  const Tensor bias = bias_param ? bias_param->compute_value : Tensor();
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
  const Tensor dbias = output_bias() ? output_bias()->compute_grad : Tensor();
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
  if (t5_output_bias_) report_grads_ready({&t5_output_bias_, 1});  // registered last
  if (output_layer_) report_grads_ready({&output_layer_, 1});
  // The last pipeline stage's tied copy is complete here (the first stage's reports later).
  if (!output_layer_ && !chunk_.has_embedding) report_grads_ready({&word_embeddings_, 1});
  if (!bert_) enter_column_region_backward(ctx, tp_, rows, d_norm, a.scratch.c0, a.scratch.staging);
  stack_norm_backward(ctx, final_norm_, dres, d_norm, a.residual.back(), a.final_norm_saved,
                      a.scratch);
}

void GPTModel::stack_norm_backward(DeviceContext& ctx, const Norm& norm, const Tensor& din,
                                   const Tensor& dout, const Tensor& in, const Norm::Saved& saved,
                                   const TransformerLayer::Scratch& scratch) {
  if (tp_.sp()) {
    // The norm saw only this rank's rows: sum its gradients over TP before reporting.
    const Tensor g = scratch.sp_grads.flat_view(0, Shape({norm.grad_numel()}));
    ops::fill(ctx, g, 0.0);
    norm.backward(ctx, din, dout, in, saved, norm.dweight_view(g), norm.dbias_view(g));
    tp_.group->all_reduce(g);
    norm.accumulate_grads(ctx, g);
  } else {
    norm.backward(ctx, din, dout, in, saved);
  }
  std::vector<Parameter*> ready;
  norm.append_parameters(ready);
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
    if (cfg_.t5()) encoder_forward(step, batch);
    embedding_forward(step, batch);
  } else {
    ops::copy(ctx, a.residual[0], input);
  }
  a.scratch.key_lengths = batch.key_lengths;
  stack_forward(step, {layers_, a.residual, a.layers, a.scratch});
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
    if (t5_output_bias_) head.push_back(t5_output_bias_);
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
  a.scratch.encoder_lengths = batch.encoder_lengths;  // T5 (a recompute re-runs the decoder)
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
  if (cfg_.t5()) ops::fill(step.device, a.d_enc_output, 0.0);  // the decoder layers add to it
  dres = stack_backward(step, {layers_, a.residual, a.layers, a.scratch}, dres, dnext);
  if (chunk_.has_embedding) {
    embedding_backward(step, batch, dres);
    if (cfg_.t5()) encoder_backward(step, batch);
    return;
  }
  SHARDLM_REQUIRE(input_grad.defined() && input_grad.shape() == dres.shape(),
                  ErrorKind::kInvalidArgument,
                  "GPT backward: a chunk without the embedding needs an input-gradient buffer " +
                      dres.shape().to_string());
  ops::copy(step.device, input_grad, dres);
}

void GPTModel::stack_forward(StepContext& step, const StackRun& run) {
  for (size_t l = 0; l < run.layers.size(); ++l) {
    if (params_needed_) params_needed_(run.layers[l].parameters());
    run.layers[l].forward(step, run.residual[l + 1], run.residual[l], run.saved[l], run.scratch);
  }
}

Tensor GPTModel::stack_backward(StepContext& step, const StackRun& run, Tensor dres,
                                Tensor dnext) {
  const int64_t L = static_cast<int64_t>(run.layers.size());
  for (int64_t l = L; l-- > 0;) {
    const TransformerLayer& layer = run.layers[l];
    if (recompute_.recomputes_layer(l)) {
      // Entering a recomputed chunk from its last layer: re-run the chunk's forward from its
      // stored input (same dropout masks), refilling the chunk's activation slots.
      const auto [begin, end] = recompute_.chunk_of(l, L);
      if (l == end - 1)
        for (int64_t j = begin; j < end; ++j)
          run.layers[j].forward(step, run.residual[j + 1], run.residual[j], run.saved[j],
                                run.scratch);
    }
    const bool attention_recomputed = !recompute_.recomputes_layer(l) && recompute_.selective();
    if (attention_recomputed) layer.recompute_attention(step, run.saved[l], run.scratch);
    layer.backward(step, dnext, dres, run.residual[l], run.saved[l], run.scratch,
                   attention_recomputed);
    std::swap(dres, dnext);
    std::vector<Parameter*> ready = layer.parameters();
    std::reverse(ready.begin(), ready.end());
    report_grads_ready(ready);
  }
  return dres;
}

void GPTModel::encoder_forward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t B = micro_batch_, TE = encoder_cfg_.seq_length, C = cfg_.hidden_size;
  Activations& a = acts();
  SHARDLM_REQUIRE(batch.encoder_tokens.shape() == Shape({B, TE}), ErrorKind::kInvalidArgument,
                  "T5 forward: encoder_tokens " + batch.encoder_tokens.shape().to_string() +
                      " must be [micro-batch, encoder seq-length] = " + Shape({B, TE}).to_string());
  if (tp_.enabled() && batch.encoder_tokens.device().is_cpu())
    check_ids_below("encoder tokens", batch.encoder_tokens, cfg_.padded_vocab_size());
  const SequenceRows rows = encoder_rows();
  embed_tokens(step, batch, batch.encoder_tokens, rows, a.enc_embedding, a.enc_residual[0],
               a.enc_scratch, kDropoutEncoderEmbedding);
  a.enc_scratch.key_lengths = batch.encoder_lengths;
  stack_forward(step, {encoder_layers_, a.enc_residual, a.enc_layers, a.enc_scratch});
  if (params_needed_) {
    std::vector<Parameter*> norm;
    encoder_final_norm_->append_parameters(norm);
    params_needed_(norm);
  }
  // The decoder's cross-attention reads every encoder row on every TP rank.
  const Tensor local =
      tp_.sp() ? a.enc_scratch.c2.flat_view(0, Shape({rows.local(tp_), C})) : a.enc_output;
  encoder_final_norm_->forward(ctx, local, a.enc_final_norm_saved, a.enc_residual.back());
  enter_column_region(ctx, tp_, rows, a.enc_output, local, a.enc_scratch.staging);
  a.scratch.encoder_lengths = batch.encoder_lengths;
}

void GPTModel::encoder_backward(StepContext& step, const Batch& batch) {
  DeviceContext& ctx = step.device;
  const int64_t C = cfg_.hidden_size;
  Activations& a = acts();
  const SequenceRows rows = encoder_rows();
  // d_enc_output holds every decoder layer's partial (over TP) gradient: complete it on the
  // rank's rows (all-reduce, or reduce-scatter under SP).
  const Tensor d_local = tp_.sp()
                             ? a.enc_scratch.c1.flat_view(0, Shape({rows.local(tp_), C}))
                             : a.d_enc_output;
  enter_column_region_backward(ctx, tp_, rows, d_local, a.d_enc_output, a.enc_scratch.staging);
  Tensor dres = a.enc_dresidual0;
  a.enc_scratch.key_lengths = batch.encoder_lengths;
  stack_norm_backward(ctx, *encoder_final_norm_, dres, d_local, a.enc_residual.back(),
                      a.enc_final_norm_saved, a.enc_scratch);
  dres = stack_backward(step, {encoder_layers_, a.enc_residual, a.enc_layers, a.enc_scratch},
                        dres, a.enc_dresidual1);
  embed_tokens_backward(step, batch, batch.encoder_tokens, rows, dres, a.enc_scratch,
                        kDropoutEncoderEmbedding, /*report=*/true);
}

}  // namespace shardlm::model
