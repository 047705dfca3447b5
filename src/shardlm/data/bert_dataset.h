// BERT masked-LM samples: the BertSampleSource interface the trainer draws from, and BertDataset,
// Megatron Core's BERTMaskedWordPieceDataset over one split of an indexed dataset whose
// documents are split into sentences (`shardlm preprocess --split-sentences`).
//
// Sample k (sample_mapping()[k]: sentences [first, end) of one document, a target length) is built
// with numpy.random.RandomState((seed + k) % 2**32) semantics, in Megatron's draw order:
//   1. binary head: pivot = 1, or randint(1, n) for n >= 3 sentences; is_random = random() < 0.5
//      swaps A and B (the sentence-order label); without it A is every sentence, B is empty
//   2. while len(A) + len(B) > target: drop from the longer (B on ties) at the front when
//      random() < 0.5, else at the back
//   3. [CLS] A [SEP] B [SEP] (B [SEP] only when B is non-empty), types 0...0 1...1
//   4. masking (masked_lm.h), then padding with [PAD] to seq_length
// Token types on padding are 0 (Megatron pads them with the [PAD] id, 0 in BERT vocabularies).
//
// Thread safety: immutable after construction; get() may run concurrently. Errors (all
// Error(kInvalidConfig), naming the problem and the fix): seq_length < 5, no vocab, a corpus
// without multi-sentence documents while the binary head needs two sentences, a split that
// yields no sample.
//
//   auto corpus = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
//   BertDatasetConfig c{.seq_length = 128, .vocab = masked_lm_vocab_of(tokenizer)};
//   BertDataset train(corpus, {0, 900}, /*num_samples=*/10000, c, "train");
//   std::vector<int32_t> tok(128), types(128), labels(128); std::vector<float> loss(128);
//   BertSampleView view{tok, types, labels, loss};
//   train.get(0, view);   // view.length, view.sentence_order are set too
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardlm/data/bert_sample_mapping.h"
#include "shardlm/data/gpt_sample_index.h"
#include "shardlm/data/indexed_dataset.h"
#include "shardlm/data/masked_lm.h"
#include "shardlm/data/tokenizer/masked_lm_vocab.h"

namespace shardlm::data {

struct BertSampleView {            // caller-owned buffers, each of seq_length S
  std::span<int32_t> tokens;       // [CLS] A [SEP] B [SEP] then [PAD]...
  std::span<int32_t> token_types;  // 0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding
  std::span<int32_t> labels;       // original id where masked, else -1
  std::span<float> loss_mask;      // 1 where masked, else 0
  int32_t length = 0;              // valid tokens (the rest is padding)
  int32_t sentence_order = 0;      // binary-head label: 1 when A and B were swapped (is_random)
};

class BertSampleSource {  // get() is a pure function of index, thread-safe
 public:
  virtual ~BertSampleSource() = default;
  virtual int64_t size() const = 0;
  virtual int64_t seq_length() const = 0;
  virtual void get(int64_t index, BertSampleView& out) const = 0;
};

struct BertDatasetConfig {
  int64_t seq_length = 0;             // --seq-length
  uint32_t seed = 1234;               // --seed
  double masking_probability = 0.15;  // --mask-prob
  double short_seq_prob = 0.1;        // --short-seq-prob
  int32_t max_ngram = 3;              // Megatron's BERT: 3
  bool whole_word = true;             // Megatron's BERT: masking_do_full_word=True
  bool binary_head = true;            // --bert-binary-head (default) / --bert-no-binary-head
  std::shared_ptr<const MaskedLmVocab> vocab;
};

class BertDataset final : public BertSampleSource {
 public:
  // documents: the split's document range (split_document_range over num_documents());
  // num_samples: nullopt = one epoch.
  BertDataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
              std::optional<int64_t> num_samples, BertDatasetConfig config,
              std::string split_name);

  int64_t size() const override { return static_cast<int64_t>(mapping_.size()); }
  int64_t seq_length() const override { return config_.seq_length; }
  void get(int64_t index, BertSampleView& out) const override;

  std::span<const BertSampleRange> sample_mapping() const { return mapping_; }
  const std::string& split_name() const { return split_name_; }

 private:
  std::shared_ptr<const IndexedDataset> corpus_;
  BertDatasetConfig config_;
  std::string split_name_;
  std::vector<BertSampleRange> mapping_;
};

// Checks a view's spans against seq_length (shared by every BertSampleSource).
void check_bert_view(const BertSampleView& out, int64_t seq_length);

// Steps 1-4 above for one sample's sentences (exposed for MockBertDataset and tests).
void build_bert_sample(std::span<const std::vector<int32_t>> sentences, int32_t target_length,
                       uint64_t sample_seed, const BertDatasetConfig& config,
                       BertSampleView& out);

}  // namespace shardlm::data
