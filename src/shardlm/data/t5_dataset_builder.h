// build_t5_datasets: Megatron's data flags -> train / valid / test T5 sample sources
// (pretrain_t5.py's train_valid_test_datasets_provider for one corpus).
//
//   --data-path P (one prefix, e.g. corpus_text_sentence from preprocess --split-sentences)
//   --split 969,30,1 over the corpus' *documents* (as BERT: Megatron's MaskedWordPieceDataset)
//   --encoder-seq-length (= --seq-length), --decoder-seq-length, --mask-prob, --short-seq-prob,
//   --seed; the tokenizer built with --vocab-extra-ids (100 in Megatron's T5 examples)
// A split with no documents is null when no samples are requested from it; requesting samples
// from it is an Error(kInvalidConfig). Blends of several corpora are not supported yet (an
// Error says so).
//
//   T5DataConfig c;
//   c.data_path = {"data/wiki_text_sentence"}; c.encoder_seq_length = 512;
//   c.decoder_seq_length = 128; c.num_samples = {10000, 100, 0};
//   c.vocab = masked_lm_vocab_of(tokenizer);       // tokenizer with vocab_extra_ids = 100
//   T5Datasets d = build_t5_datasets(c);
//   d.train->get(i, view);
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlm/data/t5_dataset.h"

namespace shardlm::data {

struct T5DataConfig {
  std::vector<std::string> data_path;  // Megatron --data-path words
  std::string split = "969, 30, 1";
  int64_t encoder_seq_length = 0;  // --encoder-seq-length / --seq-length
  int64_t decoder_seq_length = 0;  // --decoder-seq-length
  uint32_t seed = 1234;
  std::array<std::optional<int64_t>, 3> num_samples;  // train, valid, test (nullopt = 1 epoch)
  double mask_prob = 0.15;                            // --mask-prob
  double short_seq_prob = 0.1;                        // --short-seq-prob
  std::shared_ptr<const MaskedLmVocab> vocab;
};

struct T5Datasets {
  std::unique_ptr<T5SampleSource> train;
  std::unique_ptr<T5SampleSource> valid;
  std::unique_ptr<T5SampleSource> test;
};

T5Datasets build_t5_datasets(const T5DataConfig& config);

}  // namespace shardlm::data
