// build_bert_sample_mapping: Megatron's helpers.cpp build_mapping, which cuts documents of
// sentences into BERT samples. For each epoch, each document (in order) with at least
// min_sentences sentences and no sentence longer than 512 tokens is walked sentence by sentence,
// closing a sample when its token count reaches the target length (while more than one sentence
// remains and it holds >= min_sentences) or at the document's end. Targets come from
// get_target_sample_len: with short_seq_prob > 0, a std::mt19937(seed) draw r gives
// 2 + r % (max_seq_length - 1) when r % round(1 / short_seq_prob) == 0, else max_seq_length.
// Epochs repeat until num_samples is reached (checked at epoch starts, so the last epoch is
// kept whole), or once when num_samples is nullopt. The list is then shuffled with
// std::mt19937_64(seed + 1) (Fisher-Yates, j = draw % (i + 1)). Same samples and order as
// Megatron for the same inputs.
//
// Throws Error(kInvalidConfig) when the documents yield no sample at all but samples are wanted
// (Megatron would loop for 2^31 epochs), saying why.
//
//   std::vector<int64_t> docs = {0, 3, 5};        // 2 documents: sentences [0,3) and [3,5)
//   std::vector<int32_t> lens = {10, 12, 7, 30, 4};
//   auto map = build_bert_sample_mapping(docs, lens, {.max_seq_length = 125, .seed = 1234,
//                                                     .num_samples = 100});
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace shardlm::data {

// Sentences [first_sentence, end_sentence) of one document, to fit target_length tokens.
struct BertSampleRange {
  int64_t first_sentence = 0;
  int64_t end_sentence = 0;
  int32_t target_length = 0;
};

struct BertMappingConfig {
  int32_t max_seq_length = 0;  // seq_length - 3 ([CLS] and two [SEP])
  double short_seq_prob = 0.1;
  int32_t seed = 1234;
  int32_t min_sentences = 2;  // 2 with the binary (sentence-order) head, else 1
  std::optional<uint64_t> num_samples;  // nullopt: one epoch
};

// Megatron's LONG_SENTENCE_LEN: documents holding a longer sentence are skipped.
inline constexpr int32_t kBertLongSentenceLength = 512;

// document_starts: the first sentence of each document plus the end (documents + 1 entries).
std::vector<BertSampleRange> build_bert_sample_mapping(std::span<const int64_t> document_starts,
                                                       std::span<const int32_t> sentence_lengths,
                                                       const BertMappingConfig& config);

}  // namespace shardlm::data
