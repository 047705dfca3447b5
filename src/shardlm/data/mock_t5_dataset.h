// MockT5Dataset (`--mock-data` for T5): synthetic span-corruption samples a T5 can learn, built
// by the same code as T5Dataset (truncation, geometric-span masking, sentinels, padding).
// Sample i is a counting run start, start+1, ... over the word ids cut into 1-3 "sentences", so
// a masked span follows from the tokens around its sentinel. Every fourth word id is a "##"
// continuation piece, so whole-word masking is exercised. The target length is the longest
// that can never overflow the decoder (1 + 2 * floor(0.15 * target) <= decoder_seq_length,
// and <= encoder_seq_length - 2), so get() never throws. Pure function of (seed, i);
// thread-safe.
//
// Vocabulary (vocab()): [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [BOS]=4 [EOS]=5, words 6.., and the
// sentinels last (as Megatron appends <extra_id_i> after the vocab file's ids), one per span a
// sample can hold.
//
//   MockT5Dataset mock(/*num_samples=*/1000, /*encoder=*/64, /*decoder=*/32, /*vocab=*/128, 1234);
//   mock.get(0, view);
#pragma once

#include <memory>

#include "shardlm/data/t5_dataset.h"

namespace shardlm::data {

class MockT5Dataset final : public T5SampleSource {
 public:
  // Throws Error(kInvalidConfig) for lengths too short to hold a masked span or a vocabulary
  // too small for the specials, sentinels and 8 words.
  MockT5Dataset(int64_t num_samples, int64_t encoder_seq_length, int64_t decoder_seq_length,
                int64_t vocab_size, uint32_t seed);
  int64_t size() const override { return num_samples_; }
  int64_t encoder_seq_length() const override { return config_.encoder_seq_length; }
  int64_t decoder_seq_length() const override { return config_.decoder_seq_length; }
  void get(int64_t index, T5SampleView& out) const override;
  const std::shared_ptr<const MaskedLmVocab>& vocab() const { return config_.vocab; }
  int32_t target_length() const { return target_length_; }

 private:
  int64_t num_samples_;
  int64_t num_words_ = 0;
  int32_t target_length_ = 0;
  T5DatasetConfig config_;
};

}  // namespace shardlm::data
