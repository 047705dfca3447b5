#include "shardlm/data/mock_t5_dataset.h"

#include <cmath>
#include <string>
#include <vector>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/data/masked_lm_corpus.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::data {
namespace {

constexpr int32_t kFirstWord = 6;  // after [PAD] [CLS] [SEP] [MASK] [BOS] [EOS]
constexpr int64_t kMinWords = 8;

// Masked tokens (and so spans) a sample of `target` tokens can hold: the masking budget's bound.
int64_t max_masked(double mask_prob, int64_t target) {
  return static_cast<int64_t>(std::floor(mask_prob * static_cast<double>(target)));
}

}  // namespace

MockT5Dataset::MockT5Dataset(int64_t num_samples, int64_t encoder_seq_length,
                             int64_t decoder_seq_length, int64_t vocab_size, uint32_t seed)
    : num_samples_(num_samples) {
  config_.encoder_seq_length = encoder_seq_length;
  config_.decoder_seq_length = decoder_seq_length;
  config_.seed = seed;
  SHARDLM_REQUIRE(num_samples >= 0, ErrorKind::kInvalidConfig, "negative mock sample count");
  // The longest target whose worst case ([BOS] + a sentinel per masked token + the tokens) fits.
  int64_t target = encoder_seq_length - 2;
  while (target > 0 &&
         1 + 2 * max_masked(config_.masking_probability, target) > decoder_seq_length) {
    --target;
  }
  if (max_masked(config_.masking_probability, target) < 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "T5 mock data needs room for one masked span: use --encoder-seq-length (or "
                "--seq-length) >= 9 and --decoder-seq-length >= 3 (got " +
                    std::to_string(encoder_seq_length) + " and " +
                    std::to_string(decoder_seq_length) + ")");
  }
  target_length_ = static_cast<int32_t>(target);
  const int64_t num_sentinels = max_masked(config_.masking_probability, target);
  num_words_ = vocab_size - kFirstWord - num_sentinels;
  if (num_words_ < kMinWords) {
    throw Error(
        ErrorKind::kInvalidConfig,
        "T5 mock data with --encoder-seq-length " + std::to_string(encoder_seq_length) +
            " needs --vocab-size >= " + std::to_string(kFirstWord + num_sentinels + kMinWords) +
            " (6 special ids, " + std::to_string(num_sentinels) + " sentinels, " +
            std::to_string(kMinWords) + " words); got " + std::to_string(vocab_size));
  }
  std::vector<bool> continuation(vocab_size, false);
  for (int64_t id = kFirstWord; id < kFirstWord + num_words_; ++id) continuation[id] = id % 4 == 3;
  std::vector<int32_t> sentinels;
  for (int64_t id = vocab_size - num_sentinels; id < vocab_size; ++id) {
    sentinels.push_back(static_cast<int32_t>(id));
  }
  config_.vocab = std::make_shared<FixedMaskedLmVocab>(
      static_cast<int32_t>(vocab_size),
      FixedMaskedLmVocab::Ids{.cls = 1, .sep = 2, .pad = 0, .mask = 3, .bos = 4, .eos = 5},
      std::move(continuation), std::move(sentinels));
  validate_t5_config(config_);
}

void MockT5Dataset::get(int64_t index, T5SampleView& out) const {
  SHARDLM_CHECK(index >= 0 && index < num_samples_);
  const uint64_t h = mix64(config_.seed ^ mix64(static_cast<uint64_t>(index)));
  const int num_sentences = 1 + static_cast<int>(h % 3);
  // A few tokens past the target, so truncation is exercised.
  const int32_t total = target_length_ + static_cast<int32_t>((h >> 4) % 4);
  std::vector<std::vector<int32_t>> sentences(num_sentences);
  int64_t next = static_cast<int64_t>((h >> 8) % static_cast<uint64_t>(num_words_));
  for (int32_t k = 0; k < total; ++k, ++next) {
    sentences[static_cast<size_t>(k) * num_sentences / total].push_back(
        static_cast<int32_t>(kFirstWord + next % num_words_));
  }
  build_t5_sample(sentences, target_length_, masked_lm_sample_seed(config_.seed, index), config_,
                  out);
}

}  // namespace shardlm::data
