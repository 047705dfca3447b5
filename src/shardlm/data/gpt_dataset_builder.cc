#include "shardlm/data/gpt_dataset_builder.h"

#include <cmath>
#include <map>

#include "shardlm/base/error.h"
#include "shardlm/data/blended_dataset.h"
#include "shardlm/data/dataset_split.h"
#include "shardlm/data/gpt_dataset.h"

namespace shardlm::data {
namespace {

std::optional<double> parse_float(const std::string& word) {
  try {
    size_t used = 0;
    const double value = std::stod(word, &used);
    if (used == word.size()) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n") - b + 1);
}

// Opens each corpus once, shared by all splits and blends.
class CorpusCache {
 public:
  std::shared_ptr<const IndexedDataset> open(const std::string& prefix) {
    auto& slot = corpora_[prefix];
    if (!slot) slot = std::make_shared<const IndexedDataset>(IndexedDataset::open(prefix));
    return slot;
  }

 private:
  std::map<std::string, std::shared_ptr<const IndexedDataset>> corpora_;
};

class Builder {
 public:
  explicit Builder(const GptDataConfig& config) : config_(config) {
    dataset_config_.seq_length = config.seq_length;
    dataset_config_.seed = config.seed;
    dataset_config_.eod_mask_loss = config.eod_mask_loss;
    dataset_config_.eod_id = config.eod_id;
    dataset_config_.cache_dir = config.data_cache_path.value_or("");
  }

  // _build_megatron_dataset_splits for one prefix: one GptDataset per split in `wanted`.
  std::array<std::shared_ptr<const GptDataset>, 3> splits_of(
      const std::string& prefix, const std::array<SplitBookends, 3>& matrix,
      const std::array<std::optional<int64_t>, 3>& sizes, const std::array<bool, 3>& wanted) {
    const auto corpus = corpora_.open(prefix);
    std::array<std::shared_ptr<const GptDataset>, 3> out;
    for (int s = 0; s < 3; ++s) {
      if (!wanted[s]) continue;
      const DocumentRange range = split_document_range(matrix[s], corpus->num_sequences());
      try {
        out[s] = std::make_shared<const GptDataset>(corpus, range, sizes[s], dataset_config_,
                                                    kSplitNames[s]);
      } catch (const Error& e) {
        throw Error(e.kind(),
                    std::string(kSplitNames[s]) + " split of " + prefix + ": " + e.what());
      }
    }
    return out;
  }

  // One blend (prefixes + optional weights) over the given split matrix -> sources per split.
  std::array<std::unique_ptr<SampleSource>, 3> build_blend(
      const DataBlend& blend, const std::array<SplitBookends, 3>& matrix,
      const std::array<std::optional<int64_t>, 3>& sizes, const std::array<bool, 3>& wanted) {
    std::array<std::unique_ptr<SampleSource>, 3> result;
    if (blend.prefixes.size() == 1 && !blend.weights) {
      auto splits = splits_of(blend.prefixes[0], matrix, sizes, wanted);
      for (int s = 0; s < 3; ++s) {
        if (splits[s]) result[s] = std::make_unique<SharedSource>(splits[s]);
      }
      return result;
    }
    const size_t n = blend.prefixes.size();
    std::vector<double> weights;
    // sizes per dataset per split: target (used) and buffer (built, with surplus)
    std::vector<std::array<std::optional<int64_t>, 3>> target(n), buffer(n);
    if (blend.weights) {
      weights = normalize_weights(*blend.weights);
      for (int s = 0; s < 3; ++s) {
        if (!wanted[s]) continue;
        if (!sizes[s]) {
          throw Error(ErrorKind::kInvalidConfig,
                      std::string("a weighted --data-path blend needs a sample count for the ") +
                          kSplitNames[s] + " split");
        }
        for (size_t d = 0; d < n; ++d) {
          const double used = std::ceil(static_cast<double>(*sizes[s]) * weights[d]);
          target[d][s] = static_cast<int64_t>(used);
          buffer[d][s] =
              static_cast<int64_t>(std::ceil(used * (1.0 + config_.mid_level_dataset_surplus)));
        }
      }
    }
    std::vector<std::array<std::shared_ptr<const GptDataset>, 3>> parts;
    for (size_t d = 0; d < n; ++d) {
      parts.push_back(splits_of(blend.prefixes[d], matrix, buffer[d], wanted));
    }
    for (int s = 0; s < 3; ++s) {
      if (!wanted[s]) continue;
      std::vector<std::shared_ptr<const SampleSource>> sources;
      for (size_t d = 0; d < n; ++d) sources.push_back(parts[d][s]);
      std::vector<double> split_weights;
      int64_t size = 0;
      if (blend.weights) {
        split_weights = weights;
        for (size_t d = 0; d < n; ++d) size += *target[d][s];
      } else {
        for (size_t d = 0; d < n; ++d) {
          split_weights.push_back(static_cast<double>(parts[d][s]->size()));
          size += parts[d][s]->size();
        }
        if (sizes[s]) size = std::min(*sizes[s], size);
      }
      if (size == 0) {
        result[s] = std::make_unique<SharedSource>(parts[0][s]);  // an empty split
        continue;
      }
      result[s] = std::make_unique<BlendedDataset>(std::move(sources), split_weights, size);
    }
    return result;
  }

 private:
  // Adapts a shared GptDataset to the unique_ptr<SampleSource> the API hands out.
  class SharedSource final : public SampleSource {
   public:
    explicit SharedSource(std::shared_ptr<const SampleSource> inner) : inner_(std::move(inner)) {}
    int64_t size() const override { return inner_->size(); }
    int64_t seq_length() const override { return inner_->seq_length(); }
    void get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const override {
      inner_->get(index, tokens, loss_mask);
    }

   private:
    std::shared_ptr<const SampleSource> inner_;
  };

  const GptDataConfig& config_;
  GptDatasetConfig dataset_config_;
  CorpusCache corpora_;
};

}  // namespace

DataBlend parse_data_blend(const std::vector<std::string>& words) {
  DataBlend blend;
  if (words.empty()) return blend;
  bool weighted = words.size() % 2 == 0;
  std::vector<double> weights;
  if (weighted) {
    for (size_t i = 0; i < words.size(); i += 2) {
      const auto w = parse_float(trim(words[i]));
      if (!w) {
        weighted = false;
        break;
      }
      weights.push_back(*w);
    }
  }
  if (weighted) {
    for (size_t i = 1; i < words.size(); i += 2) blend.prefixes.push_back(trim(words[i]));
    blend.weights = std::move(weights);
  } else {
    for (const auto& w : words) blend.prefixes.push_back(trim(w));
  }
  return blend;
}

std::array<std::optional<int64_t>, 3> megatron_split_sample_counts(int64_t train_samples,
                                                                   int64_t global_batch_size,
                                                                   int64_t train_iters,
                                                                   int64_t eval_interval,
                                                                   int64_t eval_iters) {
  if (train_samples <= 0) train_samples = train_iters * global_batch_size;
  const int64_t eval_total = eval_interval > 0 ? (train_iters / eval_interval + 1) * eval_iters : 0;
  return {train_samples, eval_total * global_batch_size, eval_iters * global_batch_size};
}

GptDatasets build_gpt_datasets(const GptDataConfig& config) {
  if (config.seq_length < 2) {
    throw Error(ErrorKind::kInvalidConfig, "--seq-length must be at least 2");
  }
  const bool per_split = !config.train_data_path.empty() || !config.valid_data_path.empty() ||
                         !config.test_data_path.empty();
  if (per_split && !config.data_path.empty()) {
    throw Error(ErrorKind::kInvalidConfig,
                "give either --data-path (with --split) or --train-data-path/--valid-data-path/"
                "--test-data-path, not both");
  }
  if (!per_split && config.data_path.empty()) {
    throw Error(ErrorKind::kInvalidConfig,
                "no training data: pass --data-path PREFIX (or --mock-data for synthetic data)");
  }
  Builder builder(config);
  std::array<std::unique_ptr<SampleSource>, 3> sources;
  if (!per_split) {
    const auto matrix = parse_split_matrix(config.split);
    sources = builder.build_blend(parse_data_blend(config.data_path), matrix, config.num_samples,
                                  {true, true, true});
  } else {
    const std::vector<std::string>* paths[3] = {&config.train_data_path, &config.valid_data_path,
                                                &config.test_data_path};
    for (int s = 0; s < 3; ++s) {
      if (paths[s]->empty()) continue;
      std::array<SplitBookends, 3> matrix{};
      matrix[s] = {0.0, 1.0};
      std::array<bool, 3> wanted{};
      wanted[s] = true;
      DataBlend blend = parse_data_blend(*paths[s]);
      // Megatron builds a single prefix of a per-split blend as a plain dataset, weight or not.
      if (blend.prefixes.size() == 1) blend.weights.reset();
      auto built = builder.build_blend(blend, matrix, config.num_samples, wanted);
      sources[s] = std::move(built[s]);
    }
  }
  return {std::move(sources[0]), std::move(sources[1]), std::move(sources[2])};
}

}  // namespace shardlm::data
