// `shardlm preprocess` through a CLI::App built here, as main() builds it.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;
using testing::shared_data;

void parse(std::vector<std::string> args) {
  CLI::App app("shardlm");
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cli::register_preprocess(app);
  std::reverse(args.begin(), args.end());
  app.parse(args);
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(CmdPreprocess, MegatronCommandLineGivesMegatronBytes) {
  ScratchDir dir("cli");
  parse({"preprocess", "--input", shared_data("corpus/moby_dick.jsonl"), "--output-prefix",
         dir.file("moby_dick"), "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file",
         testing::gpt2_vocab(), "--merge-file", testing::gpt2_merges(), "--append-eod", "--workers",
         "2"});
  for (const std::string ext : {".bin", ".idx"}) {
    EXPECT_TRUE(file_bytes(dir.file("moby_dick_text_document" + ext)) ==
                file_bytes(shared_data("megatron/moby_dick_text_document" + ext)));
  }
  // merge-datasets over a folder holding that one dataset reproduces it.
  parse({"merge-datasets", "--input", dir.file(""), "--output-prefix", dir.file("merged")});
  EXPECT_TRUE(file_bytes(dir.file("merged.idx")) ==
              file_bytes(shared_data("megatron/moby_dick_text_document.idx")));
}

TEST(CmdPreprocess, UnsupportedAndMissingFlagsAreConfigErrors) {
  ScratchDir dir("cli_bad");
  const std::vector<std::string> base = {"preprocess",
                                         "--input",
                                         shared_data("corpus/moby_dick.jsonl"),
                                         "--output-prefix",
                                         dir.file("x"),
                                         "--workers",
                                         "1"};
  const auto expect_config_error = [&](std::vector<std::string> extra, const std::string& text) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    try {
      parse(args);
      ADD_FAILURE() << "no error; expected " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_config_error({"--tokenizer-type", "NullTokenizer", "--split-sentences", "--lang", "german"},
                      "--lang german is not supported");
  expect_config_error({"--tokenizer-type", "GPT2BPETokenizer"}, "--vocab-file");
  expect_config_error({"--tokenizer-type", "BertWordPieceLowerCase"}, "--vocab-file");
  expect_config_error({"--tokenizer-type", "Bogus"}, "not supported");
  expect_config_error({"--tokenizer-type", "NullTokenizer", "--partitions", "2"},
                      "--partitions 2 is not supported");
  EXPECT_THROW(parse({"preprocess", "--input", "x"}), CLI::ParseError);
}

TEST(CmdPreprocess, NullTokenizerAndSeveralKeys) {
  ScratchDir dir("cli_null");
  std::ofstream(dir.file("in.jsonl")) << "{\"a\": \"1 2 3\", \"b\": \"7\"}\n";
  parse({"preprocess", "--input", dir.file("in.jsonl"), "--output-prefix", dir.file("o"),
         "--json-keys", "a", "b", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100",
         "--append-eod", "--workers", "1"});
  EXPECT_TRUE(std::filesystem::exists(dir.file("o_a_document.bin")));
  EXPECT_EQ(std::filesystem::file_size(dir.file("o_a_document.bin")), 8u);  // 1 2 3 100, uint16
  EXPECT_EQ(std::filesystem::file_size(dir.file("o_b_document.bin")), 4u);
}

}  // namespace
}  // namespace shardlm::data
