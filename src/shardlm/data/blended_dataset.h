// BlendedDataset: Megatron Core's BlendedDataset, a SampleSource that interleaves several
// datasets in proportion to weights with Megatron's greedy deterministic rule: sample i comes
// from the dataset whose count lags its target weight * max(i, 1) the most (first on ties), and
// is that dataset's next unused sample. No randomness; each part keeps its own order.
//
// Weights are normalised with numpy's float64 sum (pairwise summation) exactly as Megatron does,
// so blends of many datasets pick the same dataset for every sample.
//
// Thread safety: immutable after construction; get() may run concurrently.
//
//   BlendedDataset blend({web, books}, {0.7, 0.3}, /*size=*/10000);
//   blend.get(0, tokens, mask);        // = web.get(0, ...)
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "shardlm/data/sample_source.h"

namespace shardlm::data {

// numpy: (w / numpy.sum(w)).tolist() for a float64 array w.
std::vector<double> normalize_weights(std::span<const double> weights);
// numpy.sum of a contiguous float64 array (pairwise summation, 8-way unrolled blocks).
double numpy_float64_sum(std::span<const double> values);

// helpers.cpp build_blending_indices: dataset_index[i], dataset_sample_index[i] for i < size.
void build_blending_indices(std::span<const double> weights, int64_t size,
                            std::vector<int16_t>& dataset_index,
                            std::vector<int64_t>& dataset_sample_index);

class BlendedDataset final : public SampleSource {
 public:
  // Throws Error(kInvalidConfig) if a dataset would be asked for more samples than it has.
  BlendedDataset(std::vector<std::shared_ptr<const SampleSource>> datasets,
                 std::vector<double> weights, int64_t size);

  int64_t size() const override { return size_; }
  int64_t seq_length() const override { return datasets_.front()->seq_length(); }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> loss_mask) const override;

  int dataset_of(int64_t index) const { return dataset_index_.at(index); }
  int64_t dataset_sample_of(int64_t index) const { return dataset_sample_index_.at(index); }
  const std::vector<double>& weights() const { return weights_; }

 private:
  std::vector<std::shared_ptr<const SampleSource>> datasets_;
  std::vector<double> weights_;
  int64_t size_;
  std::vector<int16_t> dataset_index_;
  std::vector<int64_t> dataset_sample_index_;
};

}  // namespace shardlm::data
