// MaskedLmSamples: a BERT sample source (bert_dataset.h) where the trainer takes a SampleSource,
// so data splits, sharding over data-parallel ranks, resume and evaluation treat GPT and BERT
// data alike. The trainer reads its samples through masked_lm(); the GPT window interface
// get() has no meaning for it and throws.
#pragma once

#include <memory>
#include <utility>

#include "shardlm/base/error.h"
#include "shardlm/data/bert_dataset.h"
#include "shardlm/data/sample_source.h"

namespace shardlm::data {

class MaskedLmSamples final : public SampleSource {
 public:
  explicit MaskedLmSamples(std::unique_ptr<BertSampleSource> samples)
      : samples_(std::move(samples)) {}
  int64_t size() const override { return samples_->size(); }
  int64_t seq_length() const override { return samples_->seq_length(); }
  void get(int64_t, std::span<int32_t>, std::span<float>) const override {
    throw Error(ErrorKind::kInternal,
                "a masked-LM (BERT) source has no GPT token windows: read it via masked_lm()");
  }
  const BertSampleSource* masked_lm() const override { return samples_.get(); }

 private:
  std::unique_ptr<BertSampleSource> samples_;
};

}  // namespace shardlm::data
