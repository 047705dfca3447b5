// MockBertDataset (`--mock-data` for BERT): synthetic masked-LM samples a BERT can learn, built
// by the same code as BertDataset (A/B split, truncation, masking, padding). Sample i has 2-4
// "sentences", each a counting run start, start+1, ... over the word ids, continuing across
// sentences, so a masked token follows from its neighbours and a swapped A/B pair is visible
// (B normally continues where A stops). Every fourth word id is a "##" continuation piece, so
// whole-word masking is exercised. Pure function of (seed, i); thread-safe.
//
//   MockBertDataset mock(/*num_samples=*/1000, /*seq_length=*/64, /*vocab_size=*/128, 1234);
//   mock.get(0, view);   // vocab(): [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3, words 4..vocab_size-1
#pragma once

#include <memory>

#include "shardlm/data/bert_dataset.h"

namespace shardlm::data {

class MockBertDataset final : public BertSampleSource {
 public:
  MockBertDataset(int64_t num_samples, int64_t seq_length, int64_t vocab_size, uint32_t seed,
                  bool binary_head = true);
  int64_t size() const override { return num_samples_; }
  int64_t seq_length() const override { return config_.seq_length; }
  void get(int64_t index, BertSampleView& out) const override;
  const std::shared_ptr<const MaskedLmVocab>& vocab() const { return config_.vocab; }

 private:
  int64_t num_samples_;
  int64_t vocab_size_;
  BertDatasetConfig config_;
};

}  // namespace shardlm::data
