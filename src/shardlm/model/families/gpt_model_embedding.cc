// GPTModel's embedding (gpt_model.h): the word (vocab-parallel under TP), learned position and
// BERT's token-type lookups into the residual stream with dropout, for the decoder's tokens and
// T5's encoder tokens alike, and their backward into the shared tables' gradients.
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

void GPTModel::embedding_forward(StepContext& step, const Batch& batch) {
  Activations& a = acts();
  embed_tokens(step, batch, batch.tokens, sequence_rows(), a.embedding, a.residual[0], a.scratch,
               kDropoutEmbedding);
}

void GPTModel::embed_tokens(StepContext& step, const Batch& batch, const Tensor& tokens,
                            const SequenceRows& rows, const Tensor& embedding, const Tensor& out,
                            const TransformerLayer::Scratch& scratch, uint32_t site) {
  DeviceContext& ctx = step.device;
  const int64_t B = rows.batch, T = rows.seq, C = cfg_.hidden_size;
  const double p = step.training ? cfg_.hidden_dropout : 0.0;
  const DropoutKey key = step.dropout_key(0, site);
  if (!tp_.enabled() && !cp_.enabled()) {
    ops::embedding_forward(ctx, embedding.reshape({B, T, C}), tokens,
                           word_embeddings_->compute_value,
                           position_embeddings_ ? position_embeddings_->compute_value : Tensor());
    if (tokentype_embeddings_) add_tokentype_embeddings(ctx, batch, embedding);
    ops::dropout_forward(ctx, out, embedding, p, key, 0);
    return;
  }
  // Vocab-parallel lookup (zero rows for ids of other shards), summed over TP: all-reduce, or
  // reduce-scatter into the rank's sequence shard; then the positions of the rank's rows (the
  // path context parallelism takes too, for its global positions).
  const int64_t NL = rows.local(tp_);
  ops::vocab_parallel_embedding_forward(ctx, embedding, tokens, word_embeddings_->compute_value,
                                        vocab_start_);
  const Tensor local = tp_.sp() ? scratch.c0.flat_view(0, Shape({NL, C})) : embedding;
  exit_row_region(ctx, tp_, rows, local, embedding, scratch.staging);
  if (position_embeddings_) add_position_embeddings(ctx, rows, local);
  if (tokentype_embeddings_) add_tokentype_embeddings(ctx, batch, local);
  dropout_rows_forward(ctx, tp_, rows, out, local, p, key);
}

void GPTModel::add_position_embeddings(DeviceContext& ctx, const SequenceRows& rows,
                                       const Tensor& local) const {
  const int64_t C = cfg_.hidden_size;
  const Tensor& wpe = position_embeddings_->compute_value;
  for_each_position_block(tp_, rows, [&](int64_t /*b*/, int64_t row, int64_t n, int64_t position) {
    ops::add_inplace(ctx, local.flat_view(row * C, Shape({n, C})),
                     wpe.flat_view(position * C, Shape({n, C})));
  });
}

void GPTModel::position_embedding_backward(DeviceContext& ctx, const SequenceRows& rows,
                                           const Tensor& d_local,
                                           const TransformerLayer::Scratch& scratch) {
  // Rows of the table get the sum over sequences of the gradient at each position. Sequence
  // parallelism: each rank has positions [t0, t0 + TL) of the local sequence only; sum its
  // sequences into a [TL, C] block, all-gather the blocks into [T, C] (rank order = position
  // order), then add each run of local positions to its global rows.
  const int64_t C = cfg_.hidden_size, T = rows.seq, TL = positions_per_rank(tp_, rows);
  Tensor per_position = d_local;  // [B, T, C] without SP: sum the sequences per run below
  int64_t sequences = rows.batch;
  if (tp_.sp()) {
    const Tensor block = scratch.c1.flat_view(0, Shape({TL, C}));
    per_position = scratch.c2.flat_view(0, Shape({T, C}));
    ops::fill(ctx, block, 0.0);
    for (int64_t b = 0; b < rows.batch; ++b)
      ops::add_inplace(ctx, block, d_local.flat_view(b * TL * C, Shape({TL, C})));
    tp_.group->all_gather(per_position, block);
    sequences = 1;
  }
  const Tensor& dwpe = position_embeddings_->compute_grad;
  for (const PositionRun& run : position_runs(cp_, rows.global_seq(), 0, T))
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
  // T5: the encoder's embedding runs last and reports the shared embeddings.
  embed_tokens_backward(step, batch, batch.tokens, sequence_rows(), dres, acts().scratch,
                        kDropoutEmbedding, /*report=*/!cfg_.t5());
}

void GPTModel::embed_tokens_backward(StepContext& step, const Batch& batch, const Tensor& tokens,
                                     const SequenceRows& rows, const Tensor& dres,
                                     const TransformerLayer::Scratch& scratch, uint32_t site,
                                     bool report) {
  DeviceContext& ctx = step.device;
  const int64_t B = rows.batch, T = rows.seq, C = cfg_.hidden_size;
  const double p = step.training ? cfg_.hidden_dropout : 0.0;
  const DropoutKey key = step.dropout_key(0, site);
  auto report_ready = [&](Parameter* param) {
    if (report) report_grads_ready({&param, 1});
  };
  if (!tp_.enabled() && !cp_.enabled()) {
    const Tensor d_emb = scratch.c0.flat_view(0, Shape({B * T, C}));
    ops::dropout_backward(ctx, d_emb, dres, p, key, 0);
    ops::embedding_backward(ctx, take_word_embedding_grad(ctx),
                            position_embeddings_ ? position_embeddings_->compute_grad : Tensor(),
                            d_emb.reshape({B, T, C}), tokens);
    if (tokentype_embeddings_) {
      tokentype_embedding_backward(ctx, batch, d_emb);
      report_ready(tokentype_embeddings_);
    }
    if (position_embeddings_) report_ready(position_embeddings_);
    report_ready(word_embeddings_);
    return;
  }
  const int64_t NL = rows.local(tp_);
  const Tensor d_local = scratch.c0.flat_view(0, Shape({NL, C}));
  dropout_rows_backward(ctx, tp_, rows, d_local, dres, p, key);
  if (tokentype_embeddings_) {
    tokentype_embedding_backward(ctx, batch, d_local);
    report_ready(tokentype_embeddings_);
  }
  if (position_embeddings_) {
    position_embedding_backward(ctx, rows, d_local, scratch);
    report_ready(position_embeddings_);
  }
  const Tensor d_full = tp_.sp() ? scratch.c3.flat_view(0, Shape({B * T, C})) : d_local;
  exit_row_region_backward(ctx, tp_, rows, d_full, d_local, scratch.staging);
  ops::vocab_parallel_embedding_backward(ctx, take_word_embedding_grad(ctx), d_full, tokens,
                                         vocab_start_);
  report_ready(word_embeddings_);
}

}  // namespace shardlm::model
