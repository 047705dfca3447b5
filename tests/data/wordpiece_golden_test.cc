// WordPieceTokenizer against ids that Hugging Face's BertTokenizer computed for the same vocab
// (tests/golden/data/bert/wordpiece_fixture.json, written by scripts/make_wordpiece_fixture.py
// on a machine with `transformers`). Skips when the fixture has not been generated.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

TEST(WordPieceGolden, MatchesHuggingFaceBertTokenizer) {
  const std::string path = testing::golden_data("bert/wordpiece_fixture.json");
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent; generate it with scripts/make_wordpiece_fixture.py "
                 << "(needs Python with transformers, e.g. on the GPU machine)";
  }
  std::ifstream in(path);
  const nlohmann::json fixture = nlohmann::json::parse(in);
  const std::string vocab = testing::golden_data("bert/" + fixture.at("vocab").get<std::string>());
  const auto lower = WordPieceTokenizer::from_file(vocab, true);
  const auto cased = WordPieceTokenizer::from_file(vocab, false);
  int checked = 0;
  for (const auto& c : fixture.at("cases")) {
    const auto& tok = c.at("lower_case").get<bool>() ? *lower : *cased;
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok.encode(text), c.at("ids").get<std::vector<int32_t>>())
        << (c.at("lower_case").get<bool>() ? "lower" : "cased") << " text: " << text;
    if (c.contains("decoded")) {
      EXPECT_EQ(tok.decode(c.at("ids").get<std::vector<int32_t>>()), c.at("decoded"));
    }
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace shardlm::data
