#include "shardlm/train/training_data.h"

#include "shardlm/base/error.h"
#include "shardlm/data/mock_gpt_dataset.h"

namespace shardlm::train {

TrainingData build_training_data(const TrainConfig& cfg, int64_t train_samples,
                                 int64_t valid_samples) {
  TrainingData d;
  if (cfg.data.mock_data) {
    // Validation draws from a different stream so it measures generalisation of the rule.
    d.train = std::make_unique<data::MockGPTDataset>(train_samples, cfg.model.seq_length,
                                                     cfg.model.vocab_size, cfg.seed);
    d.valid = std::make_unique<data::MockGPTDataset>(valid_samples, cfg.model.seq_length,
                                                     cfg.model.vocab_size, cfg.seed + 1);
    return d;
  }
  throw Error(ErrorKind::kUnsupported,
              "--data-path is not wired into training yet; use --mock-data");
}

}  // namespace shardlm::train
