#include "shardlm/data/bert_sample_mapping.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

// get_target_sample_len. std::mt19937's result type is 64 bits wide on LP64, so the modulo
// arithmetic below is unsigned 64-bit, as in Megatron.
int32_t target_sample_length(int32_t short_seq_ratio, int32_t max_length, std::mt19937& gen) {
  if (short_seq_ratio == 0) return max_length;
  const uint64_t r = gen();
  if (r % static_cast<uint64_t>(short_seq_ratio) == 0) {
    return static_cast<int32_t>(2 + r % static_cast<uint64_t>(max_length - 1));
  }
  return max_length;
}

}  // namespace

std::vector<BertSampleRange> build_bert_sample_mapping(std::span<const int64_t> document_starts,
                                                       std::span<const int32_t> sentence_lengths,
                                                       const BertMappingConfig& config) {
  if (config.max_seq_length <= 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "BERT samples need --seq-length >= 5 (room for [CLS], two [SEP] and 2 tokens)");
  }
  if (!(config.short_seq_prob >= 0.0 && config.short_seq_prob <= 1.0)) {
    throw Error(ErrorKind::kInvalidConfig, "--short-seq-prob " +
                                               std::to_string(config.short_seq_prob) +
                                               " must be in [0, 1]");
  }
  const int32_t short_seq_ratio =
      config.short_seq_prob > 0 ? static_cast<int32_t>(std::round(1.0 / config.short_seq_prob))
                                : 0;
  const uint64_t max_samples = config.num_samples.value_or(std::numeric_limits<uint64_t>::max());
  const int32_t num_epochs =
      config.num_samples ? std::numeric_limits<int32_t>::max() - 1 : 1;
  const int64_t num_documents = static_cast<int64_t>(document_starts.size()) - 1;

  std::vector<BertSampleRange> samples;
  std::mt19937 gen(static_cast<uint32_t>(config.seed));
  for (int32_t epoch = 0; epoch < num_epochs; ++epoch) {
    if (samples.size() >= max_samples) break;
    const size_t before = samples.size();
    for (int64_t doc = 0; doc < num_documents; ++doc) {
      const int64_t first = document_starts[doc];
      const int64_t last = document_starts[doc + 1];
      int64_t remaining = last - first;
      bool long_sentence = false;
      if (remaining > 1) {
        for (int64_t s = first; s < last && !long_sentence; ++s) {
          long_sentence = sentence_lengths[s] > kBertLongSentenceLength;
        }
      }
      if (remaining < config.min_sentences || long_sentence) continue;
      int32_t seq_len = 0;
      int32_t num_sent = 0;
      int64_t start = first;
      int32_t target = target_sample_length(short_seq_ratio, config.max_seq_length, gen);
      for (int64_t s = first; s < last; ++s) {
        seq_len += sentence_lengths[s];
        ++num_sent;
        --remaining;
        if ((seq_len >= target && remaining > 1 && num_sent >= config.min_sentences) ||
            remaining == 0) {
          samples.push_back({start, s + 1, target});
          start = s + 1;
          target = target_sample_length(short_seq_ratio, config.max_seq_length, gen);
          seq_len = 0;
          num_sent = 0;
        }
      }
    }
    if (samples.size() == before) {
      if (max_samples == 0 || !config.num_samples) break;
      throw Error(ErrorKind::kInvalidConfig,
                  "no BERT sample can be built from these " + std::to_string(num_documents) +
                      " documents: each needs >= " + std::to_string(config.min_sentences) +
                      " sentences (sequences in the .idx) and none longer than " +
                      std::to_string(kBertLongSentenceLength) +
                      " tokens; preprocess with --split-sentences, or use --bert-no-binary-head "
                      "for one-sentence documents");
    }
  }

  std::mt19937_64 shuffle_gen(static_cast<uint64_t>(config.seed + 1));
  for (int64_t i = static_cast<int64_t>(samples.size()) - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(shuffle_gen() % static_cast<uint64_t>(i + 1));
    std::swap(samples[i], samples[j]);
  }
  return samples;
}

}  // namespace shardlm::data
