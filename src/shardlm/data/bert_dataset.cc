#include "shardlm/data/bert_dataset.h"

#include <algorithm>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/data/masked_lm_corpus.h"
#include "shardlm/data/numpy_random_state.h"

namespace shardlm::data {
namespace {

void validate(const BertDatasetConfig& c) {
  if (c.seq_length < 5) {
    throw Error(ErrorKind::kInvalidConfig,
                "BERT --seq-length " + std::to_string(c.seq_length) +
                    " is too short: a sample needs [CLS], two [SEP] and at least 2 tokens (use "
                    ">= 5)");
  }
  if (!c.vocab) {
    throw Error(ErrorKind::kInvalidConfig,
                "BERT data needs the tokenizer's [CLS]/[SEP]/[PAD]/[MASK] ids: set "
                "BertDatasetConfig::vocab (masked_lm_vocab_of(tokenizer))");
  }
  validate_masking(c.masking_probability, c.max_ngram);
}

// A token run trimmed from either end without copying.
struct Segment {
  std::vector<int32_t> ids;
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};

}  // namespace

void check_bert_view(const BertSampleView& out, int64_t seq_length) {
  const auto s = static_cast<size_t>(seq_length);
  SHARDLM_CHECK(out.tokens.size() == s && out.token_types.size() == s && out.labels.size() == s &&
                out.loss_mask.size() == s);
}

void build_bert_sample(std::span<const std::vector<int32_t>> sentences, int32_t target_length,
                       uint64_t sample_seed, const BertDatasetConfig& config,
                       BertSampleView& out) {
  check_bert_view(out, config.seq_length);
  const MaskedLmVocab& vocab = *config.vocab;
  NumpyRandomState rs(static_cast<uint32_t>(sample_seed));
  const size_t n = sentences.size();
  size_t pivot = n;
  bool is_random = false;
  if (config.binary_head) {
    SHARDLM_CHECK(n > 1);  // the sample mapping guarantees two sentences
    pivot = 1;
    if (n >= 3) pivot = static_cast<size_t>(rs.randint(1, static_cast<int64_t>(n)));
    is_random = rs.random_sample() < 0.5;
  }
  Segment a, b;
  for (size_t i = 0; i < n; ++i) {
    auto& ids = i < pivot ? a.ids : b.ids;
    ids.insert(ids.end(), sentences[i].begin(), sentences[i].end());
  }
  a.end = a.ids.size();
  b.end = b.ids.size();
  if (is_random) std::swap(a, b);
  while (static_cast<int64_t>(a.size() + b.size()) > target_length) {
    Segment& longer = a.size() > b.size() ? a : b;
    if (rs.random_sample() < 0.5) {
      ++longer.begin;
    } else {
      --longer.end;
    }
  }

  std::vector<int32_t> tokens;
  tokens.reserve(a.size() + b.size() + 3);
  tokens.push_back(vocab.cls_id());
  tokens.insert(tokens.end(), a.ids.begin() + a.begin, a.ids.begin() + a.end);
  tokens.push_back(vocab.sep_id());
  const size_t first_b = tokens.size();
  if (b.size() > 0) {
    tokens.insert(tokens.end(), b.ids.begin() + b.begin, b.ids.begin() + b.end);
    tokens.push_back(vocab.sep_id());
  }
  SHARDLM_CHECK(static_cast<int64_t>(tokens.size()) <= config.seq_length);

  std::vector<MaskedToken> masked;
  create_masked_lm_predictions(tokens, target_length,
                               vocab,
                               {.masking_probability = config.masking_probability,
                                .max_ngram = config.max_ngram,
                                .whole_word = config.whole_word},
                               rs, masked);

  std::fill(out.tokens.begin(), out.tokens.end(), vocab.pad_id());
  std::fill(out.token_types.begin(), out.token_types.end(), 0);
  std::fill(out.labels.begin(), out.labels.end(), -1);
  std::fill(out.loss_mask.begin(), out.loss_mask.end(), 0.0f);
  std::copy(tokens.begin(), tokens.end(), out.tokens.begin());
  std::fill(out.token_types.begin() + first_b, out.token_types.begin() + tokens.size(), 1);
  for (const MaskedToken& m : masked) {
    out.labels[m.position] = m.label;
    out.loss_mask[m.position] = 1.0f;
  }
  out.length = static_cast<int32_t>(tokens.size());
  out.sentence_order = is_random ? 1 : 0;
}

BertDataset::BertDataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
                         std::optional<int64_t> num_samples, BertDatasetConfig config,
                         std::string split_name)
    : corpus_(std::move(corpus)), config_(std::move(config)), split_name_(std::move(split_name)) {
  validate(config_);
  BertMappingConfig mc;
  mc.max_seq_length = static_cast<int32_t>(config_.seq_length - 3);  // [CLS] and two [SEP]
  mc.short_seq_prob = config_.short_seq_prob;
  mc.seed = static_cast<int32_t>(config_.seed);
  mc.min_sentences = config_.binary_head ? 2 : 1;
  mapping_ = build_split_sample_mapping(
      *corpus_, documents, num_samples, mc,
      {.model = "BERT",
       .where = split_name_ + " split of " + corpus_->prefix(),
       .few_sentences_fix = "the binary (sentence-order) head pairs two sentences; preprocess "
                            "with --split-sentences or use --bert-no-binary-head"});
}

void BertDataset::get(int64_t index, BertSampleView& out) const {
  SHARDLM_CHECK(index >= 0 && index < size());
  const BertSampleRange& range = mapping_[static_cast<size_t>(index)];
  SHARDLM_CHECK(range.target_length <= config_.seq_length);
  build_bert_sample(read_sample_sentences(*corpus_, range), range.target_length,
                    masked_lm_sample_seed(config_.seed, index), config_, out);
}

}  // namespace shardlm::data
