// build_bert_datasets: Megatron's data flags -> train / valid / test BERT sample sources
// (pretrain_bert.py's train_valid_test_datasets_provider for one corpus).
//
//   --data-path P (one prefix, e.g. corpus_text_sentence from preprocess --split-sentences)
//   --split 949,50,1 over the corpus' *documents* (Megatron's MaskedWordPieceDataset splits
//   documents, unlike GPT which splits sequences)
// A split with no documents is null when no samples are requested from it; requesting samples
// from it is an Error(kInvalidConfig). Blends of several corpora are not supported yet (an
// Error says so).
//
//   BertDataConfig c;
//   c.data_path = {"data/wiki_text_sentence"}; c.seq_length = 512;
//   c.num_samples = megatron_split_sample_counts(...);          // gpt_dataset_builder.h
//   c.vocab = masked_lm_vocab_of(tokenizer);                    // tokenizer_factory.h
//   BertDatasets d = build_bert_datasets(c);
//   d.train->get(i, view);
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlm/data/bert_dataset.h"

namespace shardlm::data {

struct BertDataConfig {
  std::vector<std::string> data_path;  // Megatron --data-path words
  std::string split = "969, 30, 1";
  int64_t seq_length = 0;
  uint32_t seed = 1234;
  std::array<std::optional<int64_t>, 3> num_samples;  // train, valid, test (nullopt = 1 epoch)
  double mask_prob = 0.15;       // --mask-prob
  double short_seq_prob = 0.1;   // --short-seq-prob
  bool binary_head = true;       // --bert-no-binary-head clears it
  std::shared_ptr<const MaskedLmVocab> vocab;
};

struct BertDatasets {
  std::unique_ptr<BertSampleSource> train;
  std::unique_ptr<BertSampleSource> valid;
  std::unique_ptr<BertSampleSource> test;
};

BertDatasets build_bert_datasets(const BertDataConfig& config);

}  // namespace shardlm::data
