// T5Samples: a T5 sample source (t5_dataset.h) where the trainer takes a SampleSource, so data
// splits, sharding over data-parallel ranks, resume and evaluation treat GPT, BERT and T5 data
// alike. The trainer reads its samples through t5(); seq_length() is the encoder's length; the
// GPT window interface get() has no meaning for it and throws.
#pragma once

#include <memory>
#include <utility>

#include "shardlm/base/error.h"
#include "shardlm/data/sample_source.h"
#include "shardlm/data/t5_dataset.h"

namespace shardlm::data {

class T5Samples final : public SampleSource {
 public:
  explicit T5Samples(std::unique_ptr<T5SampleSource> samples) : samples_(std::move(samples)) {}
  int64_t size() const override { return samples_->size(); }
  int64_t seq_length() const override { return samples_->encoder_seq_length(); }
  void get(int64_t, std::span<int32_t>, std::span<float>) const override {
    throw Error(ErrorKind::kInternal,
                "a T5 source has no GPT token windows: read its samples via t5()");
  }
  const T5SampleSource* t5() const override { return samples_.get(); }

 private:
  std::unique_ptr<T5SampleSource> samples_;
};

}  // namespace shardlm::data
