#include "shardlm/data/t5_dataset.h"

#include <algorithm>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/data/masked_lm.h"
#include "shardlm/data/masked_lm_corpus.h"
#include "shardlm/data/numpy_random_state.h"

namespace shardlm::data {
namespace {

constexpr const char* kSentinelFix = "pass --vocab-extra-ids 100 (Megatron's T5 setting)";

void check_view(const T5SampleView& out, const T5DatasetConfig& c) {
  const auto te = static_cast<size_t>(c.encoder_seq_length);
  const auto td = static_cast<size_t>(c.decoder_seq_length);
  SHARDLM_CHECK(out.encoder_tokens.size() == te && out.decoder_tokens.size() == td &&
                out.labels.size() == td && out.loss_mask.size() == td);
}

}  // namespace

void validate_t5_config(const T5DatasetConfig& c) {
  if (c.encoder_seq_length < 4) {
    throw Error(ErrorKind::kInvalidConfig,
                "T5 --encoder-seq-length (--seq-length) " + std::to_string(c.encoder_seq_length) +
                    " is too short: samples hold up to --encoder-seq-length - 2 tokens and need "
                    "at least 2 (use >= 4)");
  }
  if (c.decoder_seq_length < 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "T5 needs --decoder-seq-length (the decoder's sequence length, e.g. 128); got " +
                    std::to_string(c.decoder_seq_length));
  }
  if (!c.vocab) {
    throw Error(ErrorKind::kInvalidConfig,
                "T5 data needs the tokenizer's [PAD]/[MASK]/[BOS]/[EOS] and sentinel ids: set "
                "T5DatasetConfig::vocab (masked_lm_vocab_of(tokenizer))");
  }
  if (c.vocab->bos_id() < 0 || c.vocab->eos_id() < 0) {
    throw Error(ErrorKind::kInvalidConfig,
                "T5 data needs [BOS] and [EOS] ids, which this vocabulary lacks (use "
                "--tokenizer-type BertWordPieceLowerCase or BertWordPieceCase, which add them)");
  }
  if (c.vocab->sentinel_ids().empty()) {
    throw Error(ErrorKind::kInvalidConfig,
                std::string("T5 replaces each masked span by a sentinel token <extra_id_i>, and "
                            "the vocabulary has none: ") +
                    kSentinelFix);
  }
  validate_masking(c.masking_probability, c.max_ngram);
}

void build_t5_sample(std::span<const std::vector<int32_t>> sentences, int32_t target_length,
                     uint32_t sample_seed, const T5DatasetConfig& config, T5SampleView& out) {
  check_view(out, config);
  SHARDLM_CHECK(target_length <= config.encoder_seq_length);
  const MaskedLmVocab& vocab = *config.vocab;
  NumpyRandomState rs(sample_seed);
  std::vector<int32_t> tokens;
  for (const auto& sentence : sentences) {
    tokens.insert(tokens.end(), sentence.begin(), sentence.end());
  }
  if (static_cast<int64_t>(tokens.size()) > target_length) tokens.resize(target_length);

  std::vector<MaskedToken> masked;
  std::vector<MaskedSpan> spans;
  create_masked_lm_predictions(tokens, target_length, vocab,
                               {.masking_probability = config.masking_probability,
                                .max_ngram = config.max_ngram,
                                .whole_word = config.whole_word,
                                .geometric_ngram_sizes = true,
                                .replacement = MaskReplacement::kAlwaysMask},
                               rs, masked, &spans);
  const std::span<const int32_t> sentinels = vocab.sentinel_ids();
  if (spans.size() > sentinels.size()) {
    const std::string counts = "the sample has " + std::to_string(spans.size()) +
                               " masked spans but the vocabulary has only " +
                               std::to_string(sentinels.size()) +
                               " sentinel tokens <extra_id_i> (one per span); ";
    throw Error(ErrorKind::kInvalidConfig, counts + kSentinelFix + " or more");
  }
  // [BOS] (or the final [EOS]) plus, per span, its sentinel and its tokens.
  const auto decoder_length = static_cast<int64_t>(1 + spans.size() + masked.size());
  if (decoder_length > config.decoder_seq_length) {
    throw Error(ErrorKind::kInvalidConfig,
                "the sample needs " + std::to_string(decoder_length) +
                    " decoder positions ([BOS], " + std::to_string(spans.size()) +
                    " sentinels and " + std::to_string(masked.size()) +
                    " masked tokens) but --decoder-seq-length is " +
                    std::to_string(config.decoder_seq_length) +
                    "; raise --decoder-seq-length to at least " + std::to_string(decoder_length) +
                    " (masked tokens are about --mask-prob * --encoder-seq-length)");
  }

  std::fill(out.encoder_tokens.begin(), out.encoder_tokens.end(), vocab.pad_id());
  std::fill(out.decoder_tokens.begin(), out.decoder_tokens.end(), vocab.pad_id());
  std::fill(out.labels.begin(), out.labels.end(), -1);
  std::fill(out.loss_mask.begin(), out.loss_mask.end(), 0.0f);
  size_t enc = 0, dec = 0;
  int32_t copied_until = 0;  // tokens before this position are in the encoder or a span
  const auto copy_tokens = [&](int32_t begin, int32_t end) {
    for (int32_t i = begin; i < end; ++i) out.encoder_tokens[enc++] = tokens[i];
  };
  out.decoder_tokens[dec] = vocab.bos_id();
  for (size_t s = 0; s < spans.size(); ++s) {
    const MaskedToken& first = masked[spans[s].begin];
    const MaskedToken& last = masked[spans[s].end - 1];
    copy_tokens(copied_until, first.position);
    out.encoder_tokens[enc++] = sentinels[s];
    out.labels[dec] = sentinels[s];
    out.decoder_tokens[++dec] = sentinels[s];
    for (int32_t m = spans[s].begin; m < spans[s].end; ++m) {
      out.labels[dec] = masked[m].label;
      out.decoder_tokens[++dec] = masked[m].label;
    }
    copied_until = last.position + 1;
  }
  copy_tokens(copied_until, static_cast<int32_t>(tokens.size()));
  out.labels[dec++] = vocab.eos_id();
  SHARDLM_CHECK(static_cast<int64_t>(dec) == decoder_length);
  std::fill(out.loss_mask.begin(), out.loss_mask.begin() + decoder_length, 1.0f);
  out.encoder_length = static_cast<int32_t>(enc);
  out.decoder_length = static_cast<int32_t>(decoder_length);
}

T5Dataset::T5Dataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
                     std::optional<int64_t> num_samples, T5DatasetConfig config,
                     std::string split_name)
    : corpus_(std::move(corpus)), config_(std::move(config)), split_name_(std::move(split_name)) {
  validate_t5_config(config_);
  BertMappingConfig mc;
  mc.max_seq_length = static_cast<int32_t>(config_.encoder_seq_length - 2);  // [BOS] / [EOS]
  mc.short_seq_prob = config_.short_seq_prob;
  mc.seed = static_cast<int32_t>(config_.seed);
  mc.min_sentences = 1;
  mapping_ = build_split_sample_mapping(*corpus_, documents, num_samples, mc,
                                        {.model = "T5",
                                         .where = split_name_ + " split of " + corpus_->prefix(),
                                         .few_sentences_fix = ""});
}

void T5Dataset::get(int64_t index, T5SampleView& out) const {
  SHARDLM_CHECK(index >= 0 && index < size());
  const BertSampleRange& range = mapping_[static_cast<size_t>(index)];
  SHARDLM_CHECK(range.target_length <= config_.encoder_seq_length);
  try {
    build_t5_sample(read_sample_sentences(*corpus_, range), range.target_length,
                    masked_lm_sample_seed(config_.seed, index), config_, out);
  } catch (const Error& e) {
    throw Error(e.kind(), "T5 sample " + std::to_string(index) + " of the " + split_name_ +
                              " split of " + corpus_->prefix() + ": " + e.what());
  }
}

}  // namespace shardlm::data
