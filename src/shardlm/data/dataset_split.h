// Megatron's --split: "969,30,1" (any separators; missing parts are 0) is normalised to weights
// summing to 1, turned into bookends [0, w0), [w0, w0+w1), [w0+w1, w0+w1+w2) by running sums,
// and each bookend becomes a document number as int(round(bookend * num_documents)) with
// Python's round-half-to-even. Same floating-point operations as Megatron, so the same
// documents land in each split.
//
//   auto matrix = parse_split_matrix("90,8,2");
//   split_document_range(matrix[0], 138);   // {0, 124}
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "shardlm/data/gpt_sample_index.h"

namespace shardlm::data {

enum class DatasetSplit { kTrain = 0, kValid = 1, kTest = 2 };
inline constexpr std::array<const char*, 3> kSplitNames = {"train", "valid", "test"};

using SplitBookends = std::pair<double, double>;

// Throws Error(kInvalidConfig) for more than 3 parts, negative or all-zero weights.
std::array<SplitBookends, 3> parse_split_matrix(const std::string& split);

DocumentRange split_document_range(const SplitBookends& bookends, int64_t num_documents);

}  // namespace shardlm::data
