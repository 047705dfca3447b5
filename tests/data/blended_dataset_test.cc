#include "shardlm/data/blended_dataset.h"

#include <gtest/gtest.h>

#include <numeric>

#include "shardlm/base/error.h"
#include "shardlm/data/dataset_split.h"
#include "shardlm/data/gpt_dataset.h"
#include "shardlm/data/gpt_dataset_builder.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::shared_data;

// A source whose sample i is filled with (id * 1000 + i).
class NumberedSource final : public SampleSource {
 public:
  NumberedSource(int id, int64_t size) : id_(id), size_(size) {}
  int64_t size() const override { return size_; }
  int64_t seq_length() const override { return 2; }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> mask) const override {
    std::fill(tokens.begin(), tokens.end(), static_cast<int32_t>(id_ * 1000 + index));
    std::fill(mask.begin(), mask.end(), 1.0f);
  }

 private:
  int id_;
  int64_t size_;
};

TEST(BlendingIndices, GreedyRuleByHand) {
  // weights 0.5/0.25/0.25: i=0 uses max(i,1)=1 -> errors .5,.25,.25 -> dataset 0, ...
  const std::vector<double> w = {0.5, 0.25, 0.25};
  std::vector<int16_t> ds;
  std::vector<int64_t> sample;
  build_blending_indices(w, 8, ds, sample);
  EXPECT_EQ(ds, (std::vector<int16_t>{0, 1, 2, 0, 0, 1, 2, 0}));
  EXPECT_EQ(sample, (std::vector<int64_t>{0, 0, 0, 1, 2, 1, 1, 3}));
}

TEST(BlendingIndices, CountsFollowWeights) {
  const std::vector<double> w = normalize_weights(std::vector<double>{3, 1, 6});
  std::vector<int16_t> ds;
  std::vector<int64_t> sample;
  build_blending_indices(w, 10000, ds, sample);
  std::vector<int64_t> counts(3, 0);
  for (int i = 0; i < 10000; ++i) {
    EXPECT_EQ(sample[i], counts[ds[i]]);  // each part is read in order, no gaps
    ++counts[ds[i]];
  }
  EXPECT_NEAR(counts[0], 3000, 1);
  EXPECT_NEAR(counts[1], 1000, 1);
  EXPECT_NEAR(counts[2], 6000, 1);
}

TEST(NumpySum, PairwiseMatchesNumpyOnKnownCases) {
  // Below 8 elements numpy sums left to right.
  const std::vector<double> a = {0.1, 0.2, 0.3};
  EXPECT_EQ(numpy_float64_sum(a), (0.1 + 0.2) + 0.3);
  // 9..128 elements: 8 running partial sums combined as a tree, then the tail.
  std::vector<double> b(11);
  std::iota(b.begin(), b.end(), 0.1);
  double r[8];
  for (int j = 0; j < 8; ++j) r[j] = b[j];
  double expected = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (int i = 8; i < 11; ++i) expected += b[i];
  EXPECT_EQ(numpy_float64_sum(b), expected);
}

TEST(BlendedDataset, DelegatesAndChecksPartSizes) {
  std::vector<std::shared_ptr<const SampleSource>> parts = {
      std::make_shared<NumberedSource>(1, 100), std::make_shared<NumberedSource>(2, 100)};
  const BlendedDataset blend(parts, {0.75, 0.25}, 100);
  std::vector<int32_t> tokens(3);
  std::vector<float> mask(2);
  blend.get(0, tokens, mask);
  EXPECT_EQ(tokens[0], 1000);
  blend.get(1, tokens, mask);
  EXPECT_EQ(tokens[0], 2000);
  EXPECT_THROW(BlendedDataset(parts, {0.75, 0.25}, 150), Error);  // needs 113 of part 1
}

TEST(DataBlend, ParsesMegatronDataPath) {
  const DataBlend weighted = parse_data_blend({"0.3", "a", "0.7", "b"});
  ASSERT_TRUE(weighted.weights);
  EXPECT_EQ(weighted.prefixes, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(*weighted.weights, (std::vector<double>{0.3, 0.7}));
  const DataBlend plain = parse_data_blend({"a", "b"});
  EXPECT_FALSE(plain.weights);
  EXPECT_EQ(plain.prefixes.size(), 2u);
  EXPECT_FALSE(parse_data_blend({"a"}).weights);
}

// Index caches go to a scratch folder: the shared data folder must stay untouched.
GptDataConfig moby_config() {
  static const testing::ScratchDir cache("builder_cache");
  GptDataConfig c;
  c.split = "90,8,2";
  c.seq_length = 256;
  c.seed = 1234;
  c.num_samples = {3000, 40, 10};
  c.data_cache_path = cache.file("");
  return c;
}

TEST(BuildGptDatasets, SinglePrefixEqualsMegatronSplits) {
  GptDataConfig c = moby_config();
  c.data_path = {shared_data("megatron/moby_dick_text_document")};
  const GptDatasets data = build_gpt_datasets(c);
  EXPECT_EQ(data.train->size(), 3059);
  EXPECT_EQ(data.valid->size(), 82);
  EXPECT_EQ(data.test->size(), 44);
}

TEST(BuildGptDatasets, WeightedBlendUsesMegatronSizes) {
  GptDataConfig c = moby_config();
  const std::string p = shared_data("megatron/moby_dick_text_document");
  c.data_path = {"1", p, "3", p};
  const GptDatasets data = build_gpt_datasets(c);
  // ceil(3000 * 0.25) + ceil(3000 * 0.75)
  EXPECT_EQ(data.train->size(), 750 + 2250);
  EXPECT_EQ(data.valid->size(), 10 + 30);
  EXPECT_EQ(data.test->size(), 3 + 8);
  // Part 0 and part 1 are the same corpus with the same seed but different sample counts;
  // sample 0 of the blend comes from the part with the larger weight.
  const auto* blend = dynamic_cast<const BlendedDataset*>(data.train.get());
  ASSERT_NE(blend, nullptr);
  EXPECT_EQ(blend->dataset_of(0), 1);
}

TEST(BuildGptDatasets, PerSplitPathsAndEmptySplits) {
  GptDataConfig c = moby_config();
  const std::string p = shared_data("megatron/moby_dick_text_document");
  c.train_data_path = {p};
  c.num_samples = {100, 0, 0};
  const GptDatasets data = build_gpt_datasets(c);
  ASSERT_TRUE(data.train);
  EXPECT_FALSE(data.valid);
  EXPECT_GE(data.train->size(), 100);

  GptDataConfig no_test = moby_config();
  no_test.data_path = {p};
  no_test.split = "100,0,0";
  no_test.num_samples = {100, 0, 0};
  const GptDatasets d2 = build_gpt_datasets(no_test);
  EXPECT_EQ(d2.test->size(), 0);
  no_test.num_samples = {100, 0, 5};
  try {
    build_gpt_datasets(no_test);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("test split"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardlm::data
