// Token ids against golden files made by the reference libraries (transformers / tokenizers /
// sentencepiece) with tools/fixtures/make_tokenizer_fixtures.py golden. Skipped until those
// files are committed in tests/golden/data/tokenizers/.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shardlm/data/tokenizer/tokenizer_factory.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

std::string fnv1a64_ids(const std::vector<int32_t>& ids) {
  uint64_t h = 14695981039346656037ull;
  for (int32_t id : ids) {
    for (int b = 0; b < 4; ++b) {
      h ^= (static_cast<uint32_t>(id) >> (8 * b)) & 0xFF;
      h *= 1099511628211ull;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

struct GoldenCase {
  std::string name;
  TokenizerOptions options;
};

class TokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGolden, EveryDocumentOfEveryCorpus) {
  const std::string dir = testing::golden_data("tokenizers/");
  const std::string name = GetParam();
  TokenizerOptions options;
  if (name == "gpt2") {
    options = {"GPT2BPETokenizer", testing::gpt2_vocab(), testing::gpt2_merges(), "", {}};
  } else if (name == "spm_moby_bpe") {
    options = {"GPTSentencePieceTokenizer", "", "", dir + "spm_moby_bpe.model", {}};
  } else {
    options = {"HuggingFaceTokenizer", "", "", dir + name + "_tokenizer.json", {}};
  }
  int checked_files = 0;
  for (const std::string corpus : {"moby_dick", "austen", "kjv_bible"}) {
    const std::string golden = dir + name + "." + corpus + ".ids.txt";
    if (!std::filesystem::exists(golden)) continue;
    if (!std::filesystem::exists(options.tokenizer_model) && !options.tokenizer_model.empty()) {
      GTEST_SKIP() << options.tokenizer_model << " missing";
    }
    const auto tokenizer = make_tokenizer(options);
    std::ifstream expected_in(golden);
    std::ifstream corpus_in(testing::shared_data("corpus/" + corpus + ".jsonl"));
    std::string expected_line, text_line;
    int doc = 0;
    while (std::getline(corpus_in, text_line)) {
      ASSERT_TRUE(std::getline(expected_in, expected_line)) << golden << " is short";
      const std::vector<int32_t> ids =
          tokenizer->encode(nlohmann::json::parse(text_line)["text"].get<std::string>());
      std::istringstream fields(expected_line);
      int golden_doc = 0;
      size_t count = 0;
      std::string hash, head;
      fields >> golden_doc >> count >> hash >> head;
      std::string our_head;
      for (size_t i = 0; i < std::min<size_t>(16, ids.size()); ++i) {
        our_head += (i ? "," : "") + std::to_string(ids[i]);
      }
      EXPECT_EQ(ids.size(), count) << name << " " << corpus << " document " << doc;
      EXPECT_EQ(our_head, head) << name << " " << corpus << " document " << doc;
      EXPECT_EQ(fnv1a64_ids(ids), hash) << name << " " << corpus << " document " << doc;
      ++doc;
    }
    ++checked_files;
  }
  if (checked_files == 0) {
    GTEST_SKIP() << "no golden ids for " << name
                 << " yet (run tools/fixtures/make_tokenizer_fixtures.py golden)";
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, TokenizerGolden,
                         ::testing::Values("gpt2", "llama2_mini", "llama3_mini", "spm_moby_bpe"));

}  // namespace
}  // namespace shardlm::data
