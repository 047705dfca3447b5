// SampleSource: what the trainer draws training/validation samples from. A sample is
// seq_length + 1 token ids (inputs are [0, S), targets are [1, S+1)) plus a loss mask over the
// S target positions. Implementations: MockGPTDataset (synthetic, learnable) and the
// Megatron-compatible GPTDataset / BlendedDataset over indexed .bin/.idx corpora; BERT's
// masked-LM samples through MaskedLmSamples (masked_lm_samples.h) and T5's span-corruption
// samples through T5Samples (t5_samples.h).
//
// Contract: get() is a pure function of the index (deterministic, thread-safe for concurrent
// readers), so resuming or resharding the data order only needs the consumed-sample count.
#pragma once

#include <cstdint>
#include <span>

namespace shardlm::data {

class BertSampleSource;  // bert_dataset.h
class T5SampleSource;    // t5_dataset.h

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t size() const = 0;        // number of samples available
  virtual int64_t seq_length() const = 0;  // S
  // tokens: S+1 ids; loss_mask: S values in {0,1} (1 = position counts in the loss).
  virtual void get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const = 0;
  // A masked-LM (BERT) source answers with its samples (MaskedLmSamples); the trainer then reads
  // those instead of get()'s windows. Null for the GPT sources.
  virtual const BertSampleSource* masked_lm() const { return nullptr; }
  // A T5 source answers with its encoder/decoder samples (T5Samples), read instead of get()'s
  // windows. Null for the GPT and BERT sources.
  virtual const T5SampleSource* t5() const { return nullptr; }
};

}  // namespace shardlm::data
