// GPTModel: Megatron's GPT — embedding (word + learned absolute positions) → dropout →
// pre-norm TransformerLayers → final norm → output layer (tied to the word embedding unless
// untie_embeddings_and_output_weights) → softmax cross-entropy with a loss mask.
//
// Explicit forward/backward for one micro-batch at a time. Activations live in one arena
// planned from the config (plan_activation_bytes) and allocated once.
//
// Tensor parallelism (GPTModel(cfg, tp), model/tensor_parallel.h): the word embedding (and the
// untied output layer) is split by vocabulary rows over the padded vocabulary (Megatron pads it
// to a multiple of --make-vocab-size-divisible-by x TP: cfg.tensor_model_parallel_size must be
// the TP size); the embedding lookup is local to the shard, summed over TP (all-reduce, or
// reduce-scatter into sequence shards), positions are added after; logits stay [N, V/TP] and the
// cross-entropy reduces max, sum-exp and target logit over TP (never gathering logits). With
// --sequence-parallel the residual stream, final norm and dropouts run on sequence shards, and
// the gradients of replicated parameters that see only a shard (norm weights/biases, position
// embeddings) are summed over TP inside backward before they are reported ready. Row-parallel
// biases get their gradient from the full (gathered) output gradient on every rank, so they
// need no reduction. Every rank of the TP group calls forward/backward with the same batch.
//
//   TensorParallel tp = TensorParallel::of(rank_context, /*sequence_parallel=*/true);
//   cfg.tensor_model_parallel_size = tp.size();   // vocab padding, validation
//   GPTModel model(cfg, tp);  // then exactly as below, on every TP rank
//
// Context parallelism (GPTModel(cfg, tp, chunk, cp)): the model holds T = seq_length / CP
// positions of every sequence (model/context_parallel.h); batches are [B, T] of those positions
// and mask_sum stays the whole micro-batch's, so the CP ranks' losses add up to the mean. Learned
// position embeddings and dropout use global positions.
//
// T5 (cfg.t5(), Megatron's T5Model): the same class runs the encoder stack (encoder.layers.<i>,
// encoder.final_layernorm) on batch.encoder_tokens, then the decoder stack (decoder.layers.<i>
// with cross-attention to the encoder output, decoder.final_layernorm) on batch.tokens, with
// one shared embedding (dropout keyed apart) and the tied output layer plus its bias
// lm_head.output_layer.bias. config() is then the decoder stack's config (seq_length = the
// decoder's length: batches are [B, T_decoder]); the model-level config is
// TransformerConfig::stack_config's input. TP, SP, DP and recomputation (applied to both
// stacks) are supported; pipeline and context parallelism are refused with the reason.
//
// Pipeline parallelism (DESIGN §2.7): GPTModel(cfg, tp, ModelChunk{...}) holds one model chunk
// of a pipeline rank: global layers [layer_begin, layer_end) (names, init keys and dropout keep
// the GLOBAL layer index, so any partition starts equal to the whole model), the embedding when
// it is the first virtual stage and the loss head (final norm, output layer, cross-entropy) when
// it is the last. A chunk without the embedding takes its input hidden state, and one without
// the head hands its output on: forward(step, batch, slot, input, output) / backward(step,
// batch, slot, scale, output_grad, input_grad), all [NL, C] (sequence shards with SP). With
// tied embeddings the head-only chunk registers a copy of the word embedding under the same
// name (PipelineTie::kCopy; the trainer sums both copies' gradients over the embedding group).
// Several micro-batches are in flight under a schedule: set_activation_slots(n) keeps n sets of
// per-micro-batch activations (backward temporaries, scratch and recomputation buffers are
// shared); each forward/backward names its slot. Recomputation counts layers within the chunk.
//
//   GPTModel model(cfg);
//   ParameterRegistry reg;  model.register_parameters(reg);
//   reg.finalize(ctx, DType::kF32, seed);  model.bind(reg);
//   Arena acts(Device::cpu(), model.plan_activation_bytes(DType::kF32, mbs), "activations");
//   model.allocate_activations(acts, DType::kF32, mbs);
//   double loss = model.forward(step, batch);      // masked mean over this micro-batch
//   model.backward(step, 1.0 / num_microbatches);  // grads += d(loss * scale)
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "shardlm/model/context_parallel.h"
#include "shardlm/model/families/bert_heads.h"
#include "shardlm/model/layers/linear.h"
#include "shardlm/model/layers/norm.h"
#include "shardlm/model/layers/transformer_layer.h"
#include "shardlm/model/module.h"
#include "shardlm/model/tensor_parallel.h"
#include "shardlm/model/recompute.h"
#include "shardlm/model/transformer_config.h"

namespace shardlm::model {

// One micro-batch on the model's device. tokens/targets int32 [B,T]; loss_mask [B,T] in the
// model dtype; mask_sum = sum(loss_mask) (> 0), computed by whoever built the batch.
struct Batch {
  Tensor tokens;
  Tensor targets;
  Tensor loss_mask;
  double mask_sum = 0;
  // BERT (TransformerConfig::bert()), all on the model's device: token_types int32 [B,T] (read
  // by the embedding chunk; with the binary head), key_lengths int32 [B] (the padding mask: real
  // tokens per sequence; read by every chunk; undefined: no padding) and sentence_order int32
  // [B] (the binary head's label; read by the head chunk).
  Tensor token_types{};
  Tensor key_lengths{};
  Tensor sentence_order{};
  // T5 (TransformerConfig::t5()), on the model's device: the encoder's input tokens int32
  // [B, T_encoder] and its valid tokens per sequence int32 [B] (the padding mask of the
  // encoder's self-attention and of the decoder's cross-attention; undefined: no padding).
  // tokens / targets / loss_mask above are then the decoder's, [B, T_decoder].
  Tensor encoder_tokens{};
  Tensor encoder_lengths{};
};

// The part of the model one instance holds (pipeline parallelism); the default is all of it.
struct ModelChunk {
  int64_t layer_begin = 0;   // first global layer index
  int64_t layer_end = -1;    // one past the last; -1: cfg.num_layers
  bool has_embedding = true;  // first virtual stage
  bool has_head = true;       // last virtual stage: final norm, output layer, loss
};

class GPTModel {
 public:
  explicit GPTModel(const TransformerConfig& cfg);
  // A tensor-parallel shard; tp.group must outlive the model. Throws Error(kInvalidConfig)
  // naming the numbers when the config does not split over tp.size() ranks.
  GPTModel(const TransformerConfig& cfg, const TensorParallel& tp);
  // One pipeline chunk (see the header comment). Throws Error(kInvalidConfig) on an empty or
  // out-of-range layer range. cp: the context-parallel group (model/context_parallel.h); the
  // model then holds T = cfg.seq_length / CP positions of every sequence (batches are [B, T]).
  GPTModel(const TransformerConfig& cfg, const TensorParallel& tp, const ModelChunk& chunk,
           const ContextParallel& cp = {}, const ExpertParallel& ep = {});

  void register_parameters(ParameterRegistry& reg) const;
  void bind(ParameterRegistry& reg);

  size_t plan_activation_bytes(DType dtype, int64_t micro_batch) const;
  void allocate_activations(TensorAllocator& alloc, DType dtype, int64_t micro_batch);

  // Returns sum(loss_i * mask_i) / mask_sum for this micro-batch (BERT with the binary head:
  // plus the mean sentence-order loss, as Megatron's pretrain_bert); keeps activations.
  double forward(StepContext& step, const Batch& batch);
  // Accumulates gradients of (loss * loss_scale) into the registry's gradient buffer.
  void backward(StepContext& step, const Batch& batch, double loss_scale);

  // Pipeline chunk forms. The activations of this micro-batch live in `slot` (0..slots-1) from
  // forward until its backward. input [NL, C]: the previous stage's output (undefined with the
  // embedding, which reads batch.tokens); output [NL, C]: written unless the chunk has the head,
  // which reads batch.targets / loss_mask and returns the loss (0 otherwise). backward:
  // output_grad [NL, C] unless the head seeds it; input_grad [NL, C] written unless the chunk
  // has the embedding. Inputs and outputs are copied, so the caller may reuse the buffers.
  double forward(StepContext& step, const Batch& batch, int slot, const Tensor& input,
                 const Tensor& output);
  void backward(StepContext& step, const Batch& batch, int slot, double loss_scale,
                const Tensor& output_grad, const Tensor& input_grad);
  // Micro-batches whose activations are kept at once (default 1); call before
  // plan_activation_bytes / allocate_activations.
  void set_activation_slots(int slots);
  int activation_slots() const { return num_slots_; }
  const ModelChunk& chunk() const { return chunk_; }
  // The chunk's hidden state as it crosses a stage boundary: [NL, C].
  Shape boundary_shape(int64_t micro_batch) const;

  // Gradient-ready hook (data-parallel overlap): backward calls cb with exactly the parameters
  // whose gradient for this micro-batch is complete (compute_grad, or the master gradient of a
  // main_grad_fused parameter), as soon as they are: the output layer (untied) and final norm
  // first, then each transformer layer's parameters after its backward (last layer first), then
  // the position embedding, and the word embedding last (when tied it also receives the output
  // layer's gradient). Every parameter is reported exactly once per backward, in the reverse of
  // registration order. With tensor/sequence parallelism a parameter is reported after any TP
  // all-reduce of its gradient. Empty cb: none.
  using GradReadyCallback = std::function<void(std::span<Parameter* const>)>;
  void set_grad_ready_callback(GradReadyCallback cb) { grad_ready_ = std::move(cb); }
  // Parameters-needed hook (--overlap-param-gather): forward calls cb with the parameters it is
  // about to read, before it reads them, in forward order: the embeddings, each transformer
  // layer's, then the final norm's and the output layer's. Empty cb: none.
  using ParamsNeededCallback = std::function<void(std::span<Parameter* const>)>;
  void set_params_needed_callback(ParamsNeededCallback cb) { params_needed_ = std::move(cb); }
  // Activation recomputation (model/recompute.h); call before plan_activation_bytes /
  // allocate_activations. Validated against the layer count.
  void set_recompute(const RecomputeConfig& recompute);
  const RecomputeConfig& recompute() const { return recompute_; }

  const TransformerConfig& config() const { return cfg_; }
  const TensorParallel& tensor_parallel() const { return tp_; }
  const ContextParallel& context_parallel() const { return cp_; }
  // Positions of each sequence this model instance holds: cfg.seq_length / CP.
  int64_t local_seq_length() const { return cp_.local_length(cfg_.seq_length); }
  // BERT with the binary head: the mean sentence-order loss of the last forward (a part of its
  // return value); 0 otherwise.
  double last_sop_loss() const { return slots_.empty() ? 0.0 : slots_[slot_].sop_loss; }
  // BERT with the binary head (head chunk): the sentence-order logits of the last forward,
  // [B, 2] (for tests and Hugging Face comparisons; same on all TP ranks); undefined otherwise.
  const Tensor& sop_logits() const { return slots_[slot_].bert.sop_logits; }
  // Per-token losses of the last forward, [B*T] (for tests and evaluation; same on all TP ranks).
  const Tensor& token_losses() const { return slots_[slot_].losses; }
  // [B*T, V/TP]: this rank's vocabulary slice [vocab_start(), vocab_start() + V/TP).
  const Tensor& logits() const { return slots_[slot_].logits; }
  int64_t vocab_start() const { return vocab_start_; }

 private:
  // N = B*T; NL = the rank's rows (N, or N/TP with sequence parallelism); VL = V/TP.
  // One slot's view set: per-micro-batch tensors of its own, shared ones (marked) the same
  // views in every slot. L = the chunk's layers.
  struct Activations {
    std::vector<Tensor> residual;  // L+1 × [NL, C]; residual[0] = embedding output / input
    Tensor embedding;              // [N, C] shared: before dropout (TP: partial vocab sum)
    std::vector<TransformerLayer::Saved> layers;  // recomputed layers alias a slot below
    std::vector<TransformerLayer::Saved> recompute_slots;  // full recompute: one chunk's worth
    TransformerLayer::Saved shared_attention;  // selective recompute: attn + lse of all layers
    TransformerLayer::Scratch scratch;  // shared
    Tensor final_norm;             // [N, C] (all rows: gathered under sequence parallelism)
    Norm::Saved final_norm_saved;  // [NL]
    Tensor logits;                 // [N, VL]
    Tensor lse;                    // [N]
    Tensor losses;                 // [N]
    Tensor dlosses;                // [N]     shared
    Tensor dlogits;                // [N, VL] shared
    Tensor dresidual0, dresidual1; // [NL, C] shared: ping-pong residual-stream gradients
    Tensor row_max;                // [N]     shared, TP only: vocab-parallel cross-entropy
    Tensor ce_partials;            // [2, N]  shared, TP only: sum_exp, target_logit
    // BERT (head chunk): the final norm's output, all rows (the LM head's and pooler's input);
    // final_norm above then holds the LM head's output. Its activations and shared scratch.
    Tensor head_input;             // [N, C]
    BertHeads::Saved bert;
    BertHeads::Scratch bert_scratch;  // shared
    double sop_loss = 0;           // mean sentence-order loss of the slot's forward
    Tensor tokentype_grad;         // [2, C] shared, SP only: this micro-batch's, summed over TP
    // T5's encoder (NE = B*T_encoder, NLE its rows on the rank): the same roles as above.
    std::vector<Tensor> enc_residual;  // LE+1 × [NLE, C]
    std::vector<TransformerLayer::Saved> enc_layers;
    std::vector<TransformerLayer::Saved> enc_recompute_slots;  // shared
    TransformerLayer::Saved enc_shared_attention;             // shared
    Norm::Saved enc_final_norm_saved;  // [NLE]
    Tensor enc_output;                 // [NE, C] the final norm's output, all rows
    Tensor enc_embedding;              // [NE, C] shared
    TransformerLayer::Scratch enc_scratch;  // shared
    Tensor d_enc_output;               // [NE, C] shared: the decoder layers' gradient of enc_output
    Tensor enc_dresidual0, enc_dresidual1;  // [NLE, C] shared
  };
  // One stack of layers and the activations it runs with (GPT's layers, or a T5 stack).
  struct StackRun {
    const std::vector<TransformerLayer>& layers;
    std::vector<Tensor>& residual;
    std::vector<TransformerLayer::Saved>& saved;
    TransformerLayer::Scratch& scratch;
  };
  // The embedding of `tokens` [B, T] (rows: their sequence layout) into `out` [NL, C] through
  // `embedding` [N, C] and scratch, with dropout at `site`; BERT's token types from batch.
  void embed_tokens(StepContext& step, const Batch& batch, const Tensor& tokens,
                    const SequenceRows& rows, const Tensor& embedding, const Tensor& out,
                    const TransformerLayer::Scratch& scratch, uint32_t site);
  // Its backward from dres [NL, C]; report: the embeddings' gradients are complete after it.
  void embed_tokens_backward(StepContext& step, const Batch& batch, const Tensor& tokens,
                             const SequenceRows& rows, const Tensor& dres,
                             const TransformerLayer::Scratch& scratch, uint32_t site, bool report);
  // Forward of a stack's layers; backward with recomputation, reporting each layer's
  // parameters. Returns the gradient of the stack's input (one of dres / dnext).
  void stack_forward(StepContext& step, const StackRun& run);
  Tensor stack_backward(StepContext& step, const StackRun& run, Tensor dres, Tensor dnext);
  // T5: the encoder's forward into enc_output, and its backward from d_enc_output (the decoder
  // layers' gradient) down to the embedding, which then reports the embeddings' gradients.
  // A stack's final norm backward (din from dout; in: its forward input), its gradients summed
  // over TP under SP (it saw the rank's rows only), then reported.
  void stack_norm_backward(DeviceContext& ctx, const Norm& norm, const Tensor& din,
                           const Tensor& dout, const Tensor& in, const Norm::Saved& saved,
                           const TransformerLayer::Scratch& scratch);
  void encoder_forward(StepContext& step, const Batch& batch);
  void encoder_backward(StepContext& step, const Batch& batch);
  SequenceRows encoder_rows() const {
    return {micro_batch_, encoder_cfg_.seq_length, cfg_.hidden_size, cp_};
  }

  // Embedding (+ dropout) into residual[0], and its backward from dres; the loss head (final
  // norm, output layer, cross-entropy) and its backward into dres. Both handle TP.
  void embedding_forward(StepContext& step, const Batch& batch);
  void embedding_backward(StepContext& step, const Batch& batch, const Tensor& dres);
  void head_forward(StepContext& step, const Batch& batch);
  void head_backward(StepContext& step, const Batch& batch, double loss_scale, const Tensor& dres);
  SequenceRows sequence_rows() const {
    return {micro_batch_, local_seq_length(), cfg_.hidden_size, cp_};
  }
  // Adds the learned position embedding at the global positions of the rank's rows `local`
  // [NL, C] (laid out as `rows`); the backward accumulates their gradient from d_local.
  void add_position_embeddings(DeviceContext& ctx, const SequenceRows& rows,
                               const Tensor& local) const;
  void position_embedding_backward(DeviceContext& ctx, const SequenceRows& rows,
                                   const Tensor& d_local, const TransformerLayer::Scratch& scratch);
  // BERT's token-type embeddings of the rank's rows `local` [NL, C] (added), and their gradient
  // from d_local (summed over TP under sequence parallelism).
  void add_tokentype_embeddings(DeviceContext& ctx, const Batch& batch, const Tensor& local);
  void tokentype_embedding_backward(DeviceContext& ctx, const Batch& batch, const Tensor& d_local);
  // BERT's head: final norm into head_input (all rows), LM transform into final_norm; backward
  // from the output layer's (partial over TP) input gradient down to the final norm's output
  // gradient on the rank's rows, reporting the heads' parameters. Returns the view written.
  void bert_head_forward(StepContext& step, const Batch& batch);
  Tensor bert_head_backward(StepContext& step, const Batch& batch, double loss_scale,
                            const Tensor& d_lm_out);

  Activations& acts() { return slots_[slot_]; }
  void select_slot(int slot);
  int64_t num_local_layers() const { return static_cast<int64_t>(layers_.size()); }

  // The output layer's weight: the untied output layer, else the (tied) word embedding.
  Parameter* output_parameter() const;
  Tensor output_weight() const;
  // The output layer's bias (BERT's and T5's vocab-split output_layer.bias), or null.
  Parameter* output_bias() const;
  // Where the word embedding's backward adds its gradient: the compute gradient, or with
  // gradient-accumulation fusion the master gradient (zeroed first when it is the step's first
  // contribution).
  Tensor take_word_embedding_grad(DeviceContext& ctx) const;
  void report_grads_ready(std::span<Parameter* const> params) const;

  TransformerConfig model_cfg_;  // as given (T5: the model-level config)
  TransformerConfig cfg_;        // T5: the decoder stack's (stack_config)
  // Fewer query groups than TP ranks: the ranks sharing this rank's group (tp_.query_group).
  std::shared_ptr<dist::Communicator> query_group_;
  TensorParallel tp_;
  ContextParallel cp_;
  ExpertParallel ep_;
  ModelChunk chunk_;
  int64_t vocab_start_ = 0;  // first vocabulary row of this rank's shard
  std::vector<TransformerLayer> layers_;
  Norm final_norm_;
  Parameter* word_embeddings_ = nullptr;
  Parameter* position_embeddings_ = nullptr;
  Parameter* tokentype_embeddings_ = nullptr;
  Parameter* output_layer_ = nullptr;
  std::optional<BertHeads> bert_;  // BERT's head chunk
  // T5: the encoder stack (its config: stack_config(kEncoder)), its final norm, and the output
  // layer's bias.
  TransformerConfig encoder_cfg_;
  std::vector<TransformerLayer> encoder_layers_;
  std::optional<Norm> encoder_final_norm_;
  Parameter* t5_output_bias_ = nullptr;
  std::vector<Activations> slots_;  // [num_slots_]
  int num_slots_ = 1;
  size_t slot_ = 0;                 // the slot the running forward/backward uses
  int64_t micro_batch_ = 0;
  RecomputeConfig recompute_;
  GradReadyCallback grad_ready_;
  ParamsNeededCallback params_needed_;
};

}  // namespace shardlm::model
