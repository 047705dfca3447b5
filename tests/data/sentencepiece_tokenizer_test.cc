#include "shardlm/data/tokenizer/sentencepiece_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "tests/data/test_paths.h"

#ifdef SHARDLM_WITH_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

namespace shardlm::data {
namespace {

#ifdef SHARDLM_WITH_SENTENCEPIECE
// Trains a small BPE model on moby_dick once per test binary run.
std::string trained_model(const testing::ScratchDir& dir) {
  std::ifstream corpus(testing::shared_data("corpus/moby_dick.jsonl"));
  std::ofstream text(dir.file("train.txt"));
  std::string line;
  while (std::getline(corpus, line)) {
    std::string doc = nlohmann::json::parse(line)["text"];
    std::replace(doc.begin(), doc.end(), '\n', ' ');
    text << doc << "\n";
  }
  text.close();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir.file("train.txt") + " --model_prefix=" + dir.file("m") +
      " --vocab_size=500 --model_type=bpe --normalization_rule_name=identity --byte_fallback=true"
      " --num_threads=1 --minloglevel=2");
  EXPECT_TRUE(status.ok()) << status.ToString();
  return dir.file("m.model");
}

TEST(SentencePieceTokenizer, MegatronFlavours) {
  const testing::ScratchDir dir("spm");
  const std::string model = trained_model(dir);
  const auto gpt = make_sentencepiece_tokenizer(model, "GPTSentencePieceTokenizer");
  const auto llama = make_sentencepiece_tokenizer(model, "Llama2Tokenizer");
  const auto megatron = make_sentencepiece_tokenizer(model, "SentencePieceTokenizer");
  const std::string text = "Call me Ishmael. Some years ago 🙂";
  const std::vector<int32_t> ids = gpt->encode(text);
  EXPECT_EQ(gpt->decode(ids), text);
  EXPECT_EQ(gpt->vocab_size(), 500);
  EXPECT_EQ(gpt->eod_id(), 2);  // </s>
  std::vector<int32_t> with_bos = {1};
  with_bos.insert(with_bos.end(), ids.begin(), ids.end());
  EXPECT_EQ(llama->encode(text), with_bos);
  // Megatron's SentencePieceTokenizer appends <CLS> <SEP> <EOD> <MASK> <PAD> after the pieces.
  EXPECT_EQ(megatron->vocab_size(), 505);
  EXPECT_EQ(megatron->eod_id(), 502);
  const std::vector<int32_t> special = megatron->encode("a<EOD>b");
  ASSERT_GE(special.size(), 3u);
  EXPECT_NE(std::find(special.begin(), special.end(), 502), special.end());
}
#else
TEST(SentencePieceTokenizer, UnavailableIsAClearError) {
  EXPECT_FALSE(sentencepiece_available());
  EXPECT_THROW(make_sentencepiece_tokenizer("x.model", "Llama2Tokenizer"), Error);
}
#endif

}  // namespace
}  // namespace shardlm::data
