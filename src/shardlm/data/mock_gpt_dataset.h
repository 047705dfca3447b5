// MockGPTDataset (`--mock-data`): deterministic synthetic samples that a GPT can learn, in the
// spirit of Megatron's MockGPTDataset (whose documents are counting sequences 1, 2, 3, ...).
// Sample i is the counting sequence start_i, start_i + 1, ... (mod vocab), with start_i a pure
// function of (seed, i); every position is in the loss mask. The next token is always the
// current one plus one, so a model that learns the rule drives the loss towards zero.
#pragma once

#include <cstdint>

#include "shardlm/data/sample_source.h"

namespace shardlm::data {

class MockGPTDataset : public SampleSource {
 public:
  MockGPTDataset(int64_t num_samples, int64_t seq_length, int64_t vocab_size, uint64_t seed);
  int64_t size() const override { return num_samples_; }
  int64_t seq_length() const override { return seq_length_; }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const override;

 private:
  int64_t num_samples_, seq_length_, vocab_size_;
  uint64_t seed_;
};

}  // namespace shardlm::data
