#include "shardlm/data/mock_gpt_dataset.h"

#include "shardlm/base/check.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::data {

MockGPTDataset::MockGPTDataset(int64_t num_samples, int64_t seq_length, int64_t vocab_size,
                               uint64_t seed)
    : num_samples_(num_samples), seq_length_(seq_length), vocab_size_(vocab_size), seed_(seed) {
  SHARDLM_REQUIRE(vocab_size > 1 && seq_length > 0, ErrorKind::kInvalidConfig,
                  "mock data needs --vocab-size > 1 and --seq-length > 0");
}

void MockGPTDataset::get(int64_t index, std::span<int32_t> tokens,
                         std::span<float> loss_mask) const {
  SHARDLM_CHECK(index >= 0 && index < num_samples_);
  SHARDLM_CHECK_EQ(static_cast<int64_t>(tokens.size()), seq_length_ + 1);
  SHARDLM_CHECK_EQ(static_cast<int64_t>(loss_mask.size()), seq_length_);
  const uint64_t start =
      mix64(seed_ ^ mix64(static_cast<uint64_t>(index))) % static_cast<uint64_t>(vocab_size_);
  for (int64_t k = 0; k <= seq_length_; ++k)
    tokens[k] = static_cast<int32_t>((start + static_cast<uint64_t>(k)) %
                                     static_cast<uint64_t>(vocab_size_));
  for (float& m : loss_mask) m = 1.0f;
}

}  // namespace shardlm::data
