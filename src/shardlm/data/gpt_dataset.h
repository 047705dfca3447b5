// GptDataset: Megatron Core's GPTDataset over one split of an indexed dataset, as a
// SampleSource. Item k is seq_length+1 consecutive tokens of the split's documents laid end to
// end in a shuffled order (windows cross document boundaries, EOD tokens included); the order is
// Megatron's for the same corpus, split and seed (see gpt_sample_index.h). The loss mask is all
// ones, or zero where the input token is EOD when eod_mask_loss is set (Megatron's
// --eod-mask-loss).
//
// Thread safety: immutable after construction; get() may run concurrently. The indexed dataset is
// shared (several splits and blends read one mapping).
//
//   auto corpus = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
//   GptDatasetConfig config{.seq_length = 256, .seed = 1234};
//   GptDataset train(corpus, {0, 124}, /*num_samples=*/3000, config, "train");
//   std::vector<int32_t> tokens(257); std::vector<float> mask(256);
//   train.get(0, tokens, mask);
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "shardlm/data/gpt_sample_index.h"
#include "shardlm/data/indexed_dataset.h"
#include "shardlm/data/sample_source.h"

namespace shardlm::data {

struct GptDatasetConfig {
  int64_t seq_length = 0;
  uint32_t seed = 1234;
  bool eod_mask_loss = false;
  int32_t eod_id = -1;  // needed only with eod_mask_loss
  // Folder for cached index arrays ("" = next to the data, in PREFIX_DIR/cache/GPTDataset_indices;
  // nullopt = no caching).
  std::optional<std::string> cache_dir;
};

class GptDataset final : public SampleSource {
 public:
  GptDataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
             std::optional<int64_t> num_samples, const GptDatasetConfig& config,
             std::string split_name);

  int64_t size() const override { return index_.size(); }
  int64_t seq_length() const override { return config_.seq_length; }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const override;

  const GptSampleIndex& sample_index() const { return index_; }
  const std::string& split_name() const { return split_name_; }
  // Absolute ids of the documents that item k's window touches, in window order.
  std::vector<int64_t> document_ids_of(int64_t index) const;

 private:
  std::shared_ptr<const IndexedDataset> corpus_;
  GptDatasetConfig config_;
  std::string split_name_;
  GptSampleIndex index_;
};

}  // namespace shardlm::data
