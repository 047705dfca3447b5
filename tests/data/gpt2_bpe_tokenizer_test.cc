#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include "shardlm/base/error.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::gpt2_merges;
using testing::gpt2_vocab;

const Gpt2BpeTokenizer& gpt2() {
  static const auto tokenizer = Gpt2BpeTokenizer::from_files(gpt2_vocab(), gpt2_merges());
  return *tokenizer;
}

TEST(Gpt2BpeTokenizer, KnownIdsFromTheSharedReadme) {
  EXPECT_EQ(gpt2().encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(gpt2().encode("Call me Ishmael."),
            (std::vector<int32_t>{14134, 502, 1148, 21720, 417, 13}));
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eod_id(), 50256);
}

TEST(Gpt2BpeTokenizer, EndOfTextInTextIsTheSpecialToken) {
  EXPECT_EQ(gpt2().encode("Hello<|endoftext|> world"), (std::vector<int32_t>{15496, 50256, 995}));
}

TEST(Gpt2BpeTokenizer, DecodeInvertsEncodeOnText) {
  const std::string text = "It's 3.14 — naïve café, 中文!\n\n  spaces\tand tabs   ";
  EXPECT_EQ(gpt2().decode(gpt2().encode(text)), text);
}

TEST(Gpt2BpeTokenizer, RoundTripsArbitraryBytes) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
    EXPECT_EQ(gpt2().decode(gpt2().encode(bytes)), bytes);
  }
}

TEST(Gpt2BpeTokenizer, DecodeRejectsOutOfRangeIds) {
  const std::vector<int32_t> ids = {50257};
  EXPECT_THROW(gpt2().decode(ids), Error);
}

TEST(Gpt2BpeTokenizer, MissingFileIsAnIoError) {
  try {
    Gpt2BpeTokenizer::from_files("/nonexistent/vocab.json", gpt2_merges());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/vocab.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace shardlm::data
