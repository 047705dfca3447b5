#include "shardlm/train/training_data.h"

#include "shardlm/base/error.h"
#include "shardlm/data/bert_dataset_builder.h"
#include "shardlm/data/gpt_dataset_builder.h"
#include "shardlm/data/masked_lm_samples.h"
#include "shardlm/data/mock_bert_dataset.h"
#include "shardlm/data/mock_gpt_dataset.h"
#include "shardlm/data/mock_t5_dataset.h"
#include "shardlm/data/t5_dataset_builder.h"
#include "shardlm/data/t5_samples.h"
#include "shardlm/data/tokenizer/tokenizer_factory.h"

namespace shardlm::train {

namespace {

data::TokenizerOptions tokenizer_options(const TrainConfig& cfg) {
  data::TokenizerOptions o;
  o.type = cfg.data.tokenizer_type;
  o.vocab_file = cfg.data.vocab_file;
  o.merge_file = cfg.data.merge_file;
  o.tokenizer_model = cfg.data.tokenizer_model;
  o.vocab_extra_ids = cfg.data.vocab_extra_ids;
  return o;
}

// A family's sample source as the trainer's SampleSource (Adapter: MaskedLmSamples, T5Samples).
template <typename Adapter, typename Source>
std::unique_ptr<data::SampleSource> adapt(std::unique_ptr<Source> source) {
  if (!source) return nullptr;
  return std::make_unique<Adapter>(std::move(source));
}

// The train / valid sources of a masked-LM family's built datasets (BERT's, T5's).
template <typename Adapter, typename Sets>
TrainingData adapt_splits(Sets sets) {
  if (!sets.train || sets.train->size() == 0)
    throw Error(ErrorKind::kInvalidConfig,
                "the training split is empty: give it a share in --split (e.g. 969,30,1)");
  TrainingData d;
  d.train = adapt<Adapter>(std::move(sets.train));
  d.valid = adapt<Adapter>(std::move(sets.valid));
  return d;
}

// pretrain_bert's datasets: masked-LM samples from a sentence-split corpus (or mock ones).
TrainingData build_bert_data(const TrainConfig& cfg, int64_t train_samples,
                             int64_t valid_samples) {
  const bool binary = cfg.model.bert_binary_head;
  using Adapter = data::MaskedLmSamples;
  if (cfg.data.mock_data) {
    TrainingData d;
    d.train = adapt<Adapter>(std::make_unique<data::MockBertDataset>(
        train_samples, cfg.model.seq_length, cfg.model.vocab_size,
        static_cast<uint32_t>(cfg.seed), binary));
    d.valid = adapt<Adapter>(std::make_unique<data::MockBertDataset>(
        valid_samples, cfg.model.seq_length, cfg.model.vocab_size,
        static_cast<uint32_t>(cfg.seed + 1), binary));
    return d;
  }
  if (cfg.data.tokenizer_type.empty())
    throw Error(ErrorKind::kInvalidConfig,
                "BERT data needs its WordPiece tokenizer: pass --tokenizer-type "
                "BertWordPieceLowerCase (or BertWordPieceCase) --vocab-file vocab.txt");
  data::BertDataConfig c;
  c.data_path = cfg.data.data_path;
  c.split = cfg.data.split;
  c.seq_length = cfg.model.seq_length;
  c.seed = static_cast<uint32_t>(cfg.seed);
  c.num_samples = {train_samples, valid_samples, std::optional<int64_t>(0)};
  c.mask_prob = cfg.data.mask_prob;
  c.short_seq_prob = cfg.data.short_seq_prob;
  c.binary_head = binary;
  c.vocab = data::masked_lm_vocab_of(data::make_tokenizer(tokenizer_options(cfg)));
  return adapt_splits<Adapter>(data::build_bert_datasets(c));
}

// pretrain_t5's datasets: span-corruption samples from a sentence-split corpus (or mock ones).
TrainingData build_t5_data(const TrainConfig& cfg, int64_t train_samples, int64_t valid_samples) {
  const int64_t TE = cfg.model.seq_length, TD = cfg.model.decoder_seq_length;
  using Adapter = data::T5Samples;
  if (cfg.data.mock_data) {
    TrainingData d;
    d.train = adapt<Adapter>(std::make_unique<data::MockT5Dataset>(train_samples, TE, TD,
                                                         cfg.model.vocab_size,
                                                         static_cast<uint32_t>(cfg.seed)));
    d.valid = adapt<Adapter>(std::make_unique<data::MockT5Dataset>(valid_samples, TE, TD,
                                                         cfg.model.vocab_size,
                                                         static_cast<uint32_t>(cfg.seed + 1)));
    return d;
  }
  if (cfg.data.tokenizer_type.empty())
    throw Error(ErrorKind::kInvalidConfig,
                "T5 data needs its WordPiece tokenizer with sentinels: pass --tokenizer-type "
                "BertWordPieceCase (or BertWordPieceLowerCase) --vocab-file vocab.txt "
                "--vocab-extra-ids 100");
  data::T5DataConfig c;
  c.data_path = cfg.data.data_path;
  c.split = cfg.data.split;
  c.encoder_seq_length = TE;
  c.decoder_seq_length = TD;
  c.seed = static_cast<uint32_t>(cfg.seed);
  c.num_samples = {train_samples, valid_samples, std::optional<int64_t>(0)};
  c.mask_prob = cfg.data.mask_prob;
  c.short_seq_prob = cfg.data.short_seq_prob;
  c.vocab = data::masked_lm_vocab_of(data::make_tokenizer(tokenizer_options(cfg)));
  return adapt_splits<Adapter>(data::build_t5_datasets(c));
}

}  // namespace

void resolve_vocab_size(TrainConfig& cfg) {
  if (cfg.data.tokenizer_type.empty() || cfg.data.tokenizer_type == "NullTokenizer") {
    if (!cfg.data.mock_data && cfg.model.vocab_size <= 0)
      throw Error(ErrorKind::kInvalidConfig,
                  "the vocabulary size is unknown: pass --tokenizer-type (with its files) "
                  "matching the data, or --vocab-size N");
    return;
  }
  const auto tokenizer = data::make_tokenizer(tokenizer_options(cfg));
  // Megatron takes the vocabulary from the tokenizer and pads it (--make-vocab-size-divisible-by).
  cfg.model.vocab_size = tokenizer->vocab_size();
  if (tokenizer->eod_id()) cfg.data.eod_id = *tokenizer->eod_id();
}

TrainingData build_training_data(const TrainConfig& cfg, int64_t train_samples,
                                 int64_t valid_samples) {
  if (cfg.model.bert()) return build_bert_data(cfg, train_samples, valid_samples);
  if (cfg.model.t5()) return build_t5_data(cfg, train_samples, valid_samples);
  TrainingData d;
  if (cfg.data.mock_data) {
    // Validation draws from a different stream so it measures generalisation of the rule.
    d.train = std::make_unique<data::MockGPTDataset>(train_samples, cfg.model.seq_length,
                                                     cfg.model.vocab_size, cfg.seed);
    d.valid = std::make_unique<data::MockGPTDataset>(valid_samples, cfg.model.seq_length,
                                                     cfg.model.vocab_size, cfg.seed + 1);
    return d;
  }
  data::GptDataConfig c;
  c.data_path = cfg.data.data_path;
  c.split = cfg.data.split;
  c.seq_length = cfg.model.seq_length;
  c.seed = static_cast<uint32_t>(cfg.seed);
  c.num_samples = {train_samples, valid_samples, std::optional<int64_t>(0)};
  if (!cfg.data.data_cache_path.empty()) c.data_cache_path = cfg.data.data_cache_path;
  c.eod_mask_loss = cfg.data.eod_mask_loss;
  c.eod_id = cfg.data.eod_id;
  if (c.eod_mask_loss && c.eod_id < 0)
    throw Error(ErrorKind::kInvalidConfig,
                "--eod-mask-loss needs a tokenizer with an end-of-document token "
                "(--tokenizer-type ...)");
  data::GptDatasets sets = data::build_gpt_datasets(c);
  if (!sets.train || sets.train->size() == 0)
    throw Error(ErrorKind::kInvalidConfig,
                "the training split is empty: give it a share in --split (e.g. 969,30,1)");
  d.train = std::move(sets.train);
  d.valid = std::move(sets.valid);
  return d;
}

}  // namespace shardlm::train
