#include "shardlm/data/gpt_dataset.h"

#include <algorithm>

#include "shardlm/base/error.h"
#include "shardlm/data/gpt_index_cache.h"

namespace shardlm::data {

GptDataset::GptDataset(std::shared_ptr<const IndexedDataset> corpus, DocumentRange documents,
                       std::optional<int64_t> num_samples, const GptDatasetConfig& config,
                       std::string split_name)
    : corpus_(std::move(corpus)), config_(config), split_name_(std::move(split_name)) {
  if (config_.eod_mask_loss && config_.eod_id < 0) {
    throw Error(ErrorKind::kInvalidConfig, "--eod-mask-loss needs the tokenizer's EOD id");
  }
  const std::vector<int32_t> lengths = corpus_->sequence_lengths();
  const auto build = [&] {
    return build_gpt_sample_index(lengths, documents, num_samples, config_.seq_length,
                                  config_.seed);
  };
  if (config_.cache_dir) {
    const GptIndexCacheKey key{corpus_->prefix(),  documents,    num_samples,
                               config_.seq_length, config_.seed, split_name_};
    index_ = load_or_build_gpt_index(*config_.cache_dir, key, *corpus_, build);
  } else {
    index_ = build();
  }
}

void GptDataset::get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const {
  const int64_t seq = config_.seq_length;
  if (index < 0 || index >= size()) {
    throw Error(ErrorKind::kInvalidArgument, "sample " + std::to_string(index) +
                                                 " is outside the " + split_name_ + " dataset of " +
                                                 std::to_string(size()) + " samples");
  }
  if (static_cast<int64_t>(tokens.size()) != seq + 1 ||
      static_cast<int64_t>(loss_mask.size()) != seq) {
    throw Error(ErrorKind::kInvalidArgument, "GptDataset::get needs " + std::to_string(seq + 1) +
                                                 " tokens and " + std::to_string(seq) +
                                                 " mask values");
  }
  const int64_t sample = index_.shuffle_index[index];
  const int64_t row_begin = index_.sample_index[2 * sample];
  const int64_t offset_begin = index_.sample_index[2 * sample + 1];
  const int64_t row_end = index_.sample_index[2 * sample + 2];
  const int64_t offset_end = index_.sample_index[2 * sample + 3];
  size_t written = 0;
  for (int64_t row = row_begin; row <= row_end; ++row) {
    const int32_t doc = index_.document_index[row];
    const int64_t from = row == row_begin ? offset_begin : 0;
    const int64_t to = row == row_end ? offset_end + 1 : corpus_->sequence_length(doc);
    const auto count = static_cast<size_t>(to - from);
    corpus_->read_tokens(doc, from, tokens.subspan(written, count));
    written += count;
  }
  if (written != tokens.size()) {
    throw Error(ErrorKind::kInternal, "GptDataset window of " + std::to_string(written) +
                                          " tokens, expected " + std::to_string(tokens.size()));
  }
  for (int64_t i = 0; i < seq; ++i) {
    loss_mask[i] = config_.eod_mask_loss && tokens[i] == config_.eod_id ? 0.0f : 1.0f;
  }
}

std::vector<int64_t> GptDataset::document_ids_of(int64_t index) const {
  const int64_t sample = index_.shuffle_index.at(index);
  std::vector<int64_t> ids;
  for (int64_t row = index_.sample_index[2 * sample]; row <= index_.sample_index[2 * sample + 2];
       ++row) {
    ids.push_back(index_.document_index[row]);
  }
  return ids;
}

}  // namespace shardlm::data
