// BatchStaging: one micro-batch's model inputs assembled on the host from a SampleSource and, on
// a GPU, copied to device buffers, all allocated once. GPT sources give token windows (inputs
// [0, S), targets [1, S+1), the rank's context-parallel positions only); masked-LM (BERT) sources
// give tokens, labels (targets where masked), token types, real lengths and sentence order.
//
//   BatchStaging staging(device, DType::kBF16, micro_batch, seq_length, cp, vocab_size, bert);
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
  // mask_dtype: the activations' (the loss mask is multiplied with them); seq_length: the whole
  // sequence (cp holds the rank's share of it); vocab_size: ids at or above it are corrupt data.
  BatchStaging(DeviceContext& device, DType mask_dtype, int64_t micro_batch, int64_t seq_length,
               const model::ContextParallel& cp, int64_t vocab_size, bool masked_lm);

  // The samples at sample_indices (one per sequence, modulo the source's size). The views stay
  // valid until the next load. Throws Error(kCorruptData) on an id outside the vocabulary.
  model::Batch load(const data::SampleSource& source, std::span<const int64_t> sample_indices);

 private:
  struct Buffers {
    OwnedTensor tokens, targets, mask;           // [B, T_local]
    OwnedTensor token_types, lengths, order;     // BERT only: [B, T], [B], [B]
    model::Batch batch(double mask_sum) const;
  };
  double stage_windows(const data::SampleSource& source, std::span<const int64_t> indices);
  double stage_masked_lm(const data::BertSampleSource& source, std::span<const int64_t> indices);

  DeviceContext& device_;
  int64_t micro_batch_, seq_length_, vocab_size_;
  model::ContextParallel cp_;
  Buffers host_, device_buffers_;  // device_buffers_ unallocated on the CPU (host_ is used)
};

}  // namespace shardlm::train
