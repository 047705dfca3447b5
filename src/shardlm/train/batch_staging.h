// BatchStaging: one micro-batch's model inputs assembled on the host from a SampleSource and, on
// a GPU, copied to device buffers, all allocated once. GPT sources give token windows (inputs
// [0, S), targets [1, S+1), the rank's context-parallel positions only); masked-LM (BERT) sources
// give tokens, labels (targets where masked), token types, real lengths and sentence order; T5
// sources the decoder's tokens, labels and loss mask plus the encoder's tokens and real lengths.
//
//   BatchStaging staging(device, DType::kBF16, micro_batch, cfg.model, cp, vocab_size);
//   model::Batch batch = staging.load(source, sample_indices);  // views into the staging
#pragma once

#include <cstdint>
#include <span>

#include "shardlm/data/sample_source.h"
#include "shardlm/model/context_parallel.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::train {

class BatchStaging {
 public:
  // mask_dtype: the activations' (the loss mask is multiplied with them); model: the family and
  // sequence lengths (GPT / BERT: seq_length, the whole sequence, of which cp holds the rank's
  // share; T5: seq_length for the encoder, decoder_seq_length for the decoder); vocab_size: ids
  // at or above it are corrupt data.
  BatchStaging(DeviceContext& device, DType mask_dtype, int64_t micro_batch,
               const model::TransformerConfig& model, const model::ContextParallel& cp,
               int64_t vocab_size);

  // The samples at sample_indices (one per sequence, modulo the source's size). The views stay
  // valid until the next load. Throws Error(kCorruptData) on an id outside the vocabulary.
  model::Batch load(const data::SampleSource& source, std::span<const int64_t> sample_indices);

 private:
  struct Buffers {
    OwnedTensor tokens, targets, mask;           // [B, T_local]
    OwnedTensor token_types, lengths, order;     // BERT only: [B, T], [B], [B]
    OwnedTensor encoder_tokens, encoder_lengths; // T5 only: [B, T_encoder], [B]
    model::Batch batch(double mask_sum) const;
  };
  double stage_windows(const data::SampleSource& source, std::span<const int64_t> indices);
  double stage_masked_lm(const data::BertSampleSource& source, std::span<const int64_t> indices);
  double stage_t5(const data::T5SampleSource& source, std::span<const int64_t> indices);

  DeviceContext& device_;
  model::ModelFamily family_;
  int64_t micro_batch_, seq_length_, vocab_size_;  // seq_length_: the decoder's for T5
  int64_t encoder_seq_length_ = 0;                 // T5 only
  model::ContextParallel cp_;
  Buffers host_, device_buffers_;  // device_buffers_ unallocated on the CPU (host_ is used)
};

}  // namespace shardlm::train
