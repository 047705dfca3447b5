// GptDataset against Megatron Core's own output for moby_dick (shared/data/megatron/samples.json:
// seq 256, split 90,8,2, seed 1234, train 3000 and 1500 samples, valid 40, test 10).
#include "shardlm/data/gpt_dataset.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/data/dataset_split.h"
#include "shardlm/data/numpy_random_state.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::shared_data;

const nlohmann::json& megatron_samples() {
  static const nlohmann::json json = [] {
    std::ifstream in(shared_data("megatron/samples.json"));
    return nlohmann::json::parse(in);
  }();
  return json;
}

std::shared_ptr<const IndexedDataset> moby_corpus() {
  static const auto corpus = std::make_shared<const IndexedDataset>(
      IndexedDataset::open(shared_data("megatron/moby_dick_text_document")));
  return corpus;
}

TEST(NumpyRandomState, MatchesNumpyFirstDraws) {
  // numpy.random.RandomState(1234).randint(0, 2**32, dtype=numpy.uint64) would be the raw
  // stream; the reference values are MT19937's (init_genrand(1234)) first outputs.
  NumpyRandomState rs(1234);
  std::mt19937 reference(1234);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(rs.next_uint32(), reference());
  NumpyRandomState a(5489);
  EXPECT_EQ(a.next_uint32(), 3499211612u);  // MT19937 reference value for the default seed
}

TEST(DatasetSplit, MegatronBookendsAndRounding) {
  const auto matrix = parse_split_matrix("90,8,2");
  EXPECT_EQ(split_document_range(matrix[0], 138).begin, 0);
  EXPECT_EQ(split_document_range(matrix[0], 138).end, 124);
  EXPECT_EQ(split_document_range(matrix[1], 138).end, 135);
  EXPECT_EQ(split_document_range(matrix[2], 138).end, 138);
  const auto def = parse_split_matrix("969, 30, 1");
  EXPECT_DOUBLE_EQ(def[2].second, 1.0);
  const auto two = parse_split_matrix("1,1");
  EXPECT_EQ(split_document_range(two[2], 10).size(), 0);
  // round half to even: 0.5 * 5 = 2.5 -> 2
  EXPECT_EQ(split_document_range(two[0], 5).end, 2);
  EXPECT_THROW(parse_split_matrix("1,2,3,4"), Error);
  EXPECT_THROW(parse_split_matrix("0,0,0"), Error);
}

class MegatronSplit : public ::testing::TestWithParam<std::string> {};

TEST_P(MegatronSplit, IndexArraysAndWindowsMatchMegatron) {
  const nlohmann::json& expected = megatron_samples().at(GetParam());
  const std::string split_name = GetParam() == "train_1500" ? "train" : GetParam();
  const auto matrix = parse_split_matrix("90,8,2");
  const int split_id = split_name == "train" ? 0 : split_name == "valid" ? 1 : 2;
  const DocumentRange range =
      split_document_range(matrix[split_id], moby_corpus()->num_sequences());
  EXPECT_EQ(range.begin, expected.at("document_range")[0].get<int64_t>());
  EXPECT_EQ(range.end, expected.at("document_range")[1].get<int64_t>());

  GptDatasetConfig config;
  config.seq_length = 256;
  config.seed = 1234;
  const GptDataset dataset(moby_corpus(), range,
                           expected.at("num_samples_requested").get<int64_t>(), config, split_name);
  const GptSampleIndex& index = dataset.sample_index();
  EXPECT_EQ(dataset.size(), expected.at("len").get<int64_t>());
  EXPECT_EQ(index.num_epochs, expected.at("num_epochs").get<int64_t>());
  EXPECT_EQ(index.num_tokens_per_epoch, expected.at("num_tokens_per_epoch").get<int64_t>());
  EXPECT_EQ(index.separate_final_epoch, expected.at("separate_final_epoch").get<bool>());

  EXPECT_EQ(index.document_index, expected.at("document_index").get<std::vector<int32_t>>());
  std::vector<int64_t> flat_rows;
  for (const auto& row : expected.at("sample_index")) {
    flat_rows.push_back(row[0].get<int64_t>());
    flat_rows.push_back(row[1].get<int64_t>());
  }
  EXPECT_EQ(index.sample_index, flat_rows);
  EXPECT_EQ(index.shuffle_index, expected.at("shuffle_index").get<std::vector<int64_t>>());

  std::vector<int32_t> tokens(257);
  std::vector<float> mask(256);
  for (const auto& sample : expected.at("samples")) {
    const int64_t k = sample.at("index").get<int64_t>();
    dataset.get(k, tokens, mask);
    EXPECT_EQ(tokens, sample.at("text").get<std::vector<int32_t>>()) << "item " << k;
    EXPECT_EQ(dataset.document_ids_of(k), sample.at("document_ids").get<std::vector<int64_t>>());
    for (float m : mask) ASSERT_EQ(m, 1.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(Moby, MegatronSplit,
                         ::testing::Values("train", "train_1500", "valid", "test"));

TEST(GptDataset, EodMaskLossZeroesEodInputs) {
  GptDatasetConfig config;
  config.seq_length = 256;
  config.eod_mask_loss = true;
  config.eod_id = 50256;
  const GptDataset dataset(moby_corpus(), {0, 124}, 100, config, "train");
  std::vector<int32_t> tokens(257);
  std::vector<float> mask(256);
  int masked = 0;
  for (int64_t k = 0; k < dataset.size(); ++k) {
    dataset.get(k, tokens, mask);
    for (int i = 0; i < 256; ++i) {
      EXPECT_EQ(mask[i], tokens[i] == 50256 ? 0.0f : 1.0f);
      masked += mask[i] == 0.0f;
    }
  }
  EXPECT_GT(masked, 0);
}

TEST(GptDataset, EmptySplitIsEmptyOrAClearError) {
  GptDatasetConfig config;
  config.seq_length = 256;
  const GptDataset empty(moby_corpus(), {10, 10}, 0, config, "valid");
  EXPECT_EQ(empty.size(), 0);
  try {
    GptDataset(moby_corpus(), {10, 10}, 5, config, "valid");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("--split"), std::string::npos);
  }
}

TEST(GptDataset, CachedIndexEqualsFreshIndex) {
  testing::ScratchDir dir("cache");
  GptDatasetConfig config;
  config.seq_length = 128;
  config.seed = 7;
  config.cache_dir = dir.file("cache");
  const GptDataset built(moby_corpus(), {0, 124}, 5000, config, "train");
  const GptDataset loaded(moby_corpus(), {0, 124}, 5000, config, "train");  // cache hit
  EXPECT_EQ(built.sample_index().shuffle_index, loaded.sample_index().shuffle_index);
  EXPECT_EQ(built.sample_index().sample_index, loaded.sample_index().sample_index);
  EXPECT_EQ(built.sample_index().document_index, loaded.sample_index().document_index);
  EXPECT_EQ(built.sample_index().num_epochs, loaded.sample_index().num_epochs);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("cache"))) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 4);
}

}  // namespace
}  // namespace shardlm::data
