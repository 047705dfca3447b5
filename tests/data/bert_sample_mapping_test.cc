#include "shardlm/data/bert_sample_mapping.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

// The document holding sentence s.
int64_t document_of(const std::vector<int64_t>& starts, int64_t s) {
  return std::upper_bound(starts.begin(), starts.end(), s) - starts.begin() - 1;
}

TEST(BertSampleMapping, HandWorkedDocumentsWithoutShortSequences) {
  // doc 0: 10+12 >= 20 but only one sentence would remain, so the sample runs to the end.
  const std::vector<int64_t> starts = {0, 3, 5};
  const std::vector<int32_t> lengths = {10, 12, 7, 30, 4};
  BertMappingConfig c{.max_seq_length = 20, .short_seq_prob = 0.0, .seed = 1234};
  auto map = build_bert_sample_mapping(starts, lengths, c);
  ASSERT_EQ(map.size(), 2u);
  // Shuffled by std::mt19937_64(seed + 1): j = draw % 2 for i = 1.
  std::mt19937_64 gen(1235);
  const bool swapped = gen() % 2 == 0;
  const BertSampleRange& first = map[swapped ? 1 : 0];
  const BertSampleRange& second = map[swapped ? 0 : 1];
  EXPECT_EQ(first.first_sentence, 0);
  EXPECT_EQ(first.end_sentence, 3);
  EXPECT_EQ(second.first_sentence, 3);
  EXPECT_EQ(second.end_sentence, 5);
  EXPECT_EQ(first.target_length, 20);
}

TEST(BertSampleMapping, ClosesAtTheTargetWhileTwoSentencesRemain) {
  const std::vector<int64_t> starts = {0, 6};
  const std::vector<int32_t> lengths = {5, 6, 1, 1, 1, 1};
  BertMappingConfig c{.max_seq_length = 10, .short_seq_prob = 0.0, .seed = 7};
  auto map = build_bert_sample_mapping(starts, lengths, c);
  std::sort(map.begin(), map.end(),
            [](auto& a, auto& b) { return a.first_sentence < b.first_sentence; });
  ASSERT_EQ(map.size(), 2u);  // [0,2) reaches 11 >= 10 with 4 left; [2,6) runs to the end
  EXPECT_EQ(map[0].end_sentence, 2);
  EXPECT_EQ(map[1].first_sentence, 2);
  EXPECT_EQ(map[1].end_sentence, 6);
}

TEST(BertSampleMapping, PropertiesOnRandomDocuments) {
  std::mt19937 gen(3);
  std::vector<int64_t> starts = {0};
  std::vector<int32_t> lengths;
  for (int d = 0; d < 200; ++d) {
    const int n = static_cast<int>(gen() % 9);  // 0..8 sentences
    for (int s = 0; s < n; ++s) lengths.push_back(1 + static_cast<int32_t>(gen() % 60));
    if (d == 7) lengths.back() = kBertLongSentenceLength + 1;  // doc 7 is skipped (if n > 1)
    starts.push_back(static_cast<int64_t>(lengths.size()));
  }
  BertMappingConfig c{.max_seq_length = 125, .short_seq_prob = 0.1, .seed = 1234};
  const auto one_epoch = build_bert_sample_mapping(starts, lengths, c);
  ASSERT_GT(one_epoch.size(), 50u);
  int64_t short_targets = 0;
  for (const auto& r : one_epoch) {
    EXPECT_LT(r.first_sentence, r.end_sentence);
    EXPECT_GE(r.end_sentence - r.first_sentence, 2) << "binary head needs 2 sentences";
    EXPECT_EQ(document_of(starts, r.first_sentence), document_of(starts, r.end_sentence - 1));
    EXPECT_GE(r.target_length, 2);
    EXPECT_LE(r.target_length, 125);
    short_targets += r.target_length < 125;
    for (int64_t s = r.first_sentence; s < r.end_sentence; ++s) {
      EXPECT_LE(lengths[s], kBertLongSentenceLength);
    }
  }
  EXPECT_GT(short_targets, 0);
  // Every sentence of an eligible document is in exactly one sample per epoch.
  std::vector<int> covered(lengths.size(), 0);
  for (const auto& r : one_epoch) {
    for (int64_t s = r.first_sentence; s < r.end_sentence; ++s) ++covered[s];
  }
  for (size_t d = 0; d + 1 < starts.size(); ++d) {
    const int64_t n = starts[d + 1] - starts[d];
    bool long_sentence = false;
    for (int64_t s = starts[d]; s < starts[d + 1]; ++s) {
      long_sentence |= lengths[s] > kBertLongSentenceLength;
    }
    const int expected = (n >= 2 && !long_sentence) ? 1 : 0;
    for (int64_t s = starts[d]; s < starts[d + 1]; ++s) EXPECT_EQ(covered[s], expected);
  }
  // Same inputs, same mapping; min_sentences 1 also covers one-sentence documents.
  EXPECT_EQ(build_bert_sample_mapping(starts, lengths, c).size(), one_epoch.size());
  c.min_sentences = 1;
  EXPECT_GT(build_bert_sample_mapping(starts, lengths, c).size(), one_epoch.size());
}

TEST(BertSampleMapping, EpochsRepeatUntilTheSampleCountAndKeepTheLastWhole) {
  const std::vector<int64_t> starts = {0, 2, 4, 6};
  const std::vector<int32_t> lengths = {3, 3, 3, 3, 3, 3};
  BertMappingConfig c{.max_seq_length = 50, .short_seq_prob = 0.0, .seed = 1};
  EXPECT_EQ(build_bert_sample_mapping(starts, lengths, c).size(), 3u);  // one epoch
  c.num_samples = 3;
  EXPECT_EQ(build_bert_sample_mapping(starts, lengths, c).size(), 3u);
  c.num_samples = 7;  // needs 3 epochs; the third is kept whole
  EXPECT_EQ(build_bert_sample_mapping(starts, lengths, c).size(), 9u);
  c.num_samples = 0;
  EXPECT_EQ(build_bert_sample_mapping(starts, lengths, c).size(), 0u);
}

TEST(BertSampleMapping, NoEligibleDocumentIsAClearError) {
  const std::vector<int64_t> starts = {0, 1, 2};
  const std::vector<int32_t> lengths = {40, 50};
  BertMappingConfig c{.max_seq_length = 100, .num_samples = 10};
  try {
    build_bert_sample_mapping(starts, lengths, c);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("--split-sentences"), std::string::npos) << e.what();
  }
  c.max_seq_length = 1;
  EXPECT_THROW(build_bert_sample_mapping(starts, lengths, c), Error);
}

}  // namespace
}  // namespace shardlm::data
