// Builds the train and validation SampleSources a run asked for: --mock-data (synthetic,
// learnable) or Megatron-preprocessed corpora (--data-path, --split, tokenizer flags).
#pragma once

#include <memory>

#include "shardlm/data/sample_source.h"
#include "shardlm/train/train_config.h"

namespace shardlm::train {

struct TrainingData {
  std::unique_ptr<data::SampleSource> train;
  std::unique_ptr<data::SampleSource> valid;
};

// Sets cfg.model.vocab_size from the tokenizer named by the data flags (as Megatron does);
// with --mock-data or NullTokenizer, --vocab-size is used as given.
void resolve_vocab_size(TrainConfig& cfg);

TrainingData build_training_data(const TrainConfig& cfg, int64_t train_samples,
                                 int64_t valid_samples);

}  // namespace shardlm::train
