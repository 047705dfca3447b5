#include "shardlm/data/blended_dataset.h"

#include <algorithm>
#include <string>

#include "shardlm/base/error.h"
#include "shardlm/data/numpy_sum.h"

namespace shardlm::data {

double numpy_float64_sum(std::span<const double> values) {
  return 0.0 + numpy_sum(values);
}

std::vector<double> normalize_weights(std::span<const double> weights) {
  const double sum = numpy_float64_sum(weights);
  std::vector<double> out(weights.begin(), weights.end());
  for (double& w : out) w /= sum;
  return out;
}

void build_blending_indices(std::span<const double> weights, int64_t size,
                            std::vector<int16_t>& dataset_index,
                            std::vector<int64_t>& dataset_sample_index) {
  const size_t n = weights.size();
  std::vector<int64_t> current(n, 0);
  dataset_index.assign(size, 0);
  dataset_sample_index.assign(size, 0);
  for (int64_t i = 0; i < size; ++i) {
    const double position = std::max(static_cast<double>(i), 1.0);
    size_t best = 0;
    double best_error = weights[0] * position - static_cast<double>(current[0]);
    for (size_t d = 1; d < n; ++d) {
      const double error = weights[d] * position - static_cast<double>(current[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    dataset_index[i] = static_cast<int16_t>(best);
    dataset_sample_index[i] = current[best];
    ++current[best];
  }
}

BlendedDataset::BlendedDataset(std::vector<std::shared_ptr<const SampleSource>> datasets,
                               std::vector<double> weights, int64_t size)
    : datasets_(std::move(datasets)), size_(size) {
  if (datasets_.empty() || datasets_.size() != weights.size() || datasets_.size() >= 32767) {
    throw Error(ErrorKind::kInvalidConfig, "a blend needs one weight per dataset (got " +
                                               std::to_string(datasets_.size()) + " datasets and " +
                                               std::to_string(weights.size()) + " weights)");
  }
  for (size_t d = 0; d < datasets_.size(); ++d) {
    if (!(weights[d] >= 0)) {
      throw Error(ErrorKind::kInvalidConfig,
                  "blend weight " + std::to_string(d) + " is negative or NaN");
    }
    if (datasets_[d]->seq_length() != datasets_[0]->seq_length()) {
      throw Error(ErrorKind::kInvalidConfig, "blended datasets differ in sequence length");
    }
  }
  if (!(numpy_float64_sum(weights) > 0)) {
    throw Error(ErrorKind::kInvalidConfig, "blend weights sum to zero");
  }
  // Megatron normalises again here ("redundant normalization for bitwise identical comparison").
  weights_ = normalize_weights(weights);
  build_blending_indices(weights_, size_, dataset_index_, dataset_sample_index_);
  std::vector<int64_t> needed(datasets_.size(), 0);
  for (int64_t i = 0; i < size_; ++i) {
    needed[dataset_index_[i]] = dataset_sample_index_[i] + 1;
  }
  for (size_t d = 0; d < datasets_.size(); ++d) {
    if (needed[d] > datasets_[d]->size()) {
      throw Error(ErrorKind::kInvalidConfig,
                  "blend part " + std::to_string(d) + " has " +
                      std::to_string(datasets_[d]->size()) + " samples but the blend of " +
                      std::to_string(size_) + " samples needs " + std::to_string(needed[d]));
    }
  }
}

void BlendedDataset::get(int64_t index, std::span<int32_t> tokens,
                         std::span<float> loss_mask) const {
  if (index < 0 || index >= size_) {
    throw Error(ErrorKind::kInvalidArgument, "sample " + std::to_string(index) +
                                                 " is outside the blend of " +
                                                 std::to_string(size_) + " samples");
  }
  datasets_[dataset_index_[index]]->get(dataset_sample_index_[index], tokens, loss_mask);
}

}  // namespace shardlm::data
