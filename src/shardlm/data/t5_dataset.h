// T5 span-corruption samples: the T5SampleSource interface the trainer draws from, and
// T5Dataset, Megatron Core's T5MaskedWordPieceDataset over one split of an indexed dataset
// whose documents are split into sentences (`shardlm preprocess --split-sentences`).
//
// Sample k (sample_mapping()[k]: sentences [first, end) of one document and a target length
// <= encoder_seq_length - 2, Megatron's _build_sample_index(sequence_length - 2, 1)) is built
// with numpy.random.RandomState((seed + k) % 2**32) semantics, in Megatron's order:
//   1. the sentences' tokens concatenated and cut to the target length
//   2. masking (masked_lm.h) with pretrain_t5.py's settings: n-gram sizes min(geometric(0.2), 10),
//      whole words, every masked token replaced by [MASK]; the masked n-grams are the spans
//   3. span i (in position order) becomes sentinel i (<extra_id_i>, from --vocab-extra-ids):
//        encoder  tokens with each span replaced by its sentinel        then [PAD]...
//        decoder  [BOS] sentinel_0 span_0 sentinel_1 span_1 ...          then [PAD]...
//        labels   sentinel_0 span_0 sentinel_1 span_1 ... [EOS]         then -1...
//      so the decoder input is the labels shifted right by one ([BOS] first); loss_mask is 1 on
//      the decoder's decoder_length real positions.
//
// Thread safety: immutable after construction; get() may run concurrently. Errors (all
// Error(kInvalidConfig), naming the problem and the fix): --encoder-seq-length < 4, no vocab,
// a vocab without [BOS]/[EOS] or sentinels (--vocab-extra-ids 100), a split that yields no
// sample; from get(): a sample needing more decoder positions than --decoder-seq-length (Megatron
// asserts) or more sentinels than the vocabulary has.
//
//   auto corpus = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
//   T5DatasetConfig c{.encoder_seq_length = 512, .decoder_seq_length = 128,
//                     .vocab = masked_lm_vocab_of(tokenizer)};   // --vocab-extra-ids 100
//   T5Dataset train(corpus, {0, 900}, /*num_samples=*/10000, c, "train");
//   std::vector<int32_t> enc(512), dec(128), labels(128); std::vector<float> loss(128);
//   T5SampleView view{enc, dec, labels, loss};
//   train.get(0, view);   // view.encoder_length, view.decoder_length are set too
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
#include "shardlm/data/tokenizer/masked_lm_vocab.h"

namespace shardlm::data {

struct T5SampleView {                 // caller-owned buffers
  std::span<int32_t> encoder_tokens;  // [Te] text_enc, [PAD]-padded
  std::span<int32_t> decoder_tokens;  // [Td] text_dec: [BOS] sentinel span ... [PAD]-padded
  std::span<int32_t> labels;   // [Td] decoder output (sentinel span ... [EOS]); -1 on padding
  std::span<float> loss_mask;  // [Td] 1 on the first decoder_length positions
  int32_t encoder_length = 0;  // valid encoder tokens (enc_mask's ones)
  int32_t decoder_length = 0;  // valid decoder tokens (dec_mask's ones)
};

class T5SampleSource {  // get() is a pure function of index, thread-safe
 public:
  virtual ~T5SampleSource() = default;
  virtual int64_t size() const = 0;
  virtual int64_t encoder_seq_length() const = 0;  // Te
  virtual int64_t decoder_seq_length() const = 0;  // Td
  virtual void get(int64_t index, T5SampleView& out) const = 0;
};

struct T5DatasetConfig {
  int64_t encoder_seq_length = 0;              // --encoder-seq-length (= --seq-length)
  int64_t decoder_seq_length = 0;              // --decoder-seq-length
  uint32_t seed = 1234;                        // --seed
  double masking_probability = 0.15;           // --mask-prob
  double short_seq_prob = 0.1;                 // --short-seq-prob
  int32_t max_ngram = 10;                      // pretrain_t5.py: masking_max_ngram=10
  bool whole_word = true;                      // pretrain_t5.py: masking_do_full_word=True
  std::shared_ptr<const MaskedLmVocab> vocab;  // with [BOS], [EOS] and sentinels
};

class T5Dataset final : public T5SampleSource {
 public:
  // documents: the split's document range (split_document_range over num_documents());
  // num_samples: nullopt = one epoch.
  T5Dataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
            std::optional<int64_t> num_samples, T5DatasetConfig config, std::string split_name);

  int64_t size() const override { return static_cast<int64_t>(mapping_.size()); }
  int64_t encoder_seq_length() const override { return config_.encoder_seq_length; }
  int64_t decoder_seq_length() const override { return config_.decoder_seq_length; }
  void get(int64_t index, T5SampleView& out) const override;

  std::span<const BertSampleRange> sample_mapping() const { return mapping_; }
  const std::string& split_name() const { return split_name_; }

 private:
  std::shared_ptr<const IndexedDataset> corpus_;
  T5DatasetConfig config_;
  std::string split_name_;
  std::vector<BertSampleRange> mapping_;
};

// Throws Error(kInvalidConfig) for a config no sample can be built with (shared by every
// T5SampleSource that builds samples with build_t5_sample).
void validate_t5_config(const T5DatasetConfig& config);

// Steps 1-3 above for one sample's sentences (exposed for MockT5Dataset and tests). Throws
// Error(kInvalidConfig) when the sample needs more decoder positions or sentinels than it has.
void build_t5_sample(std::span<const std::vector<int32_t>> sentences, int32_t target_length,
                     uint32_t sample_seed, const T5DatasetConfig& config, T5SampleView& out);

}  // namespace shardlm::data
