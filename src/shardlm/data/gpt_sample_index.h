// Megatron Core GPTDataset's three index arrays, built exactly as Megatron builds them (same
// epochs, same separate-final-epoch rule, same numpy RandomState stream), so a dataset item k
// is the same window of tokens in ShardLM and Megatron for the same corpus, split and seed.
//
//   document_index  E copies of the split's documents, shuffled (epoch-major; with a separate
//                   final epoch, the first E-1 copies and the last copy are shuffled apart)
//   sample_index    rows (row into document_index, token offset): sample j starts at flat
//                   token j*seq_length of the documents concatenated in document_index order
//   shuffle_index   a permutation of the samples (with a separate final epoch, the samples of
//                   the first E-1 epochs and of the last are shuffled apart)
//
// Item k of the dataset is the window of seq_length+1 tokens starting at sample
// shuffle_index[k]. Pure function of its inputs.
//
//   GptSampleIndex idx = build_gpt_sample_index(lengths, {0, 124}, 3000, 256, 1234);
//   idx.size();   // 3059 samples (more than requested: whole epochs are built)
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace shardlm::data {

// A contiguous range [begin, end) of sequence ids of an indexed dataset (a split).
struct DocumentRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// Megatron's epoch arithmetic for a split (no arrays).
struct GptEpochPlan {
  int64_t num_tokens_per_epoch = 0;
  int64_t num_epochs = 0;  // 0 for an empty split
  bool separate_final_epoch = false;
  int64_t num_samples_sans_final_epoch = 0;  // meaningful when num_epochs > 1
};

struct GptSampleIndex : GptEpochPlan {
  std::vector<int32_t> document_index;  // [E * num_documents]
  std::vector<int64_t> sample_index;    // [(size() + 1) * 2], row-major (doc row, offset)
  std::vector<int64_t> shuffle_index;   // [size()]

  int64_t size() const { return static_cast<int64_t>(shuffle_index.size()); }
};

struct GptSampleIndexOptions {
  bool add_extra_token_to_sequence = true;  // windows of seq_length + 1 tokens
  bool drop_last_partial_sequence = true;   // Megatron's default for every split
};

// The epoch plan alone; throws like build_gpt_sample_index.
GptEpochPlan plan_gpt_epochs(std::span<const int32_t> sequence_lengths, DocumentRange documents,
                             std::optional<int64_t> num_samples, int64_t seq_length,
                             bool add_extra_token_to_sequence = true);

// sequence_lengths: lengths of ALL sequences of the indexed dataset (documents holds absolute
// ids). num_samples: samples requested, or nullopt for exactly one epoch (Megatron's None).
// An empty split (no tokens) gives an empty index when num_samples is 0 or nullopt and an
// Error(kInvalidConfig) otherwise (Megatron would loop forever).
GptSampleIndex build_gpt_sample_index(std::span<const int32_t> sequence_lengths,
                                      DocumentRange documents, std::optional<int64_t> num_samples,
                                      int64_t seq_length, uint32_t seed,
                                      const GptSampleIndexOptions& options = {});

}  // namespace shardlm::data
