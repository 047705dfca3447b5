#include "shardlm/data/mock_bert_dataset.h"

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::data {
namespace {

constexpr int32_t kFirstWord = 4;  // after [PAD] [CLS] [SEP] [MASK]

}  // namespace

MockBertDataset::MockBertDataset(int64_t num_samples, int64_t seq_length, int64_t vocab_size,
                                 uint32_t seed, bool binary_head)
    : num_samples_(num_samples), vocab_size_(vocab_size) {
  SHARDLM_REQUIRE(vocab_size >= kFirstWord + 8 && seq_length >= 8 && num_samples >= 0,
                  ErrorKind::kInvalidConfig,
                  "BERT mock data needs --vocab-size >= 12 and --seq-length >= 8");
  std::vector<bool> continuation(vocab_size, false);
  for (int64_t id = kFirstWord; id < vocab_size; ++id) continuation[id] = (id % 4 == 3);
  config_.seq_length = seq_length;
  config_.seed = seed;
  config_.binary_head = binary_head;
  config_.vocab = std::make_shared<FixedMaskedLmVocab>(
      static_cast<int32_t>(vocab_size), FixedMaskedLmVocab::Ids{.cls = 1, .sep = 2, .pad = 0, .mask = 3},
      std::move(continuation));
}

void MockBertDataset::get(int64_t index, BertSampleView& out) const {
  SHARDLM_CHECK(index >= 0 && index < num_samples_);
  const uint64_t h = mix64(config_.seed ^ mix64(static_cast<uint64_t>(index)));
  const int64_t words = vocab_size_ - kFirstWord;
  const int num_sentences = 2 + static_cast<int>(h % 3);
  const int32_t target = static_cast<int32_t>(config_.seq_length - 3);
  // Sentence lengths sum to about the target, so truncation trims a little.
  const int32_t per_sentence = std::max<int32_t>(1, (target + 2) / num_sentences);
  std::vector<std::vector<int32_t>> sentences(num_sentences);
  int64_t next = static_cast<int64_t>((h >> 8) % static_cast<uint64_t>(words));
  for (auto& sentence : sentences) {
    for (int32_t k = 0; k < per_sentence; ++k, ++next) {
      sentence.push_back(static_cast<int32_t>(kFirstWord + next % words));
    }
  }
  build_bert_sample(sentences, target, (config_.seed + static_cast<uint64_t>(index)) & 0xFFFFFFFFu,
                    config_, out);
}

}  // namespace shardlm::data
