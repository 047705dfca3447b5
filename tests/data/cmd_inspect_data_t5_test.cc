// `shardlm inspect-data --model-type t5` through a CLI::App built here, as main() builds it: the
// JSON lines it prints are build_t5_datasets' samples, detokenised with --decode, and its flag
// errors say which flag to pass.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/data/preprocess.h"
#include "shardlm/data/t5_dataset_builder.h"
#include "shardlm/data/tokenizer/tokenizer_factory.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;

std::string vocab_file() { return testing::golden_data("bert/vocab-lowercase-8k.txt"); }

class InspectT5 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("inspect_t5");
    PreprocessOptions o;
    o.input = testing::shared_data("corpus/moby_dick.jsonl");
    o.output_prefix = dir_->file("moby");
    o.split_sentences = true;
    o.workers = 2;
    preprocess_jsonl(
        o, *make_tokenizer({.type = "BertWordPieceLowerCase", .vocab_file = vocab_file()}));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string prefix() { return dir_->file("moby_text_sentence"); }

  // Runs inspect-data with the corpus and tokenizer flags plus `extra`; returns stdout.
  static std::string inspect(std::vector<std::string> extra, bool with_extra_ids = true) {
    std::vector<std::string> args = {
        "inspect-data",     "--model-type",           "t5",           "--data-path", prefix(),
        "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab_file()};
    if (with_extra_ids) args.insert(args.end(), {"--vocab-extra-ids", "100"});
    args.insert(args.end(), extra.begin(), extra.end());
    CLI::App app("shardlm");
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    cli::register_inspect_data(app);
    std::reverse(args.begin(), args.end());
    ::testing::internal::CaptureStdout();
    try {
      app.parse(args);
    } catch (...) {
      ::testing::internal::GetCapturedStdout();
      throw;
    }
    return ::testing::internal::GetCapturedStdout();
  }

  static ScratchDir* dir_;
};
ScratchDir* InspectT5::dir_ = nullptr;

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST_F(InspectT5, PrintsTheBuildersSamplesDetokenised) {
  const auto lines = json_lines(inspect({"--encoder-seq-length", "64", "--decoder-seq-length", "32",
                                         "--num-samples", "3", "--start", "1", "--decode"}));
  ASSERT_EQ(lines.size(), 3u);
  T5DataConfig c;
  c.data_path = {prefix()};
  c.encoder_seq_length = 64;
  c.decoder_seq_length = 32;
  c.num_samples = {4, 0, 0};
  std::shared_ptr<const Tokenizer> tok = make_tokenizer(
      {.type = "BertWordPieceLowerCase", .vocab_file = vocab_file(), .vocab_extra_ids = 100});
  c.vocab = masked_lm_vocab_of(tok);
  const T5Datasets sets = build_t5_datasets(c);
  std::vector<int32_t> enc(64), dec(32), labels(32);
  std::vector<float> loss(32);
  for (int k = 0; k < 3; ++k) {
    T5SampleView view{enc, dec, labels, loss};
    sets.train->get(k + 1, view);
    const nlohmann::json& line = lines[k];
    EXPECT_EQ(line.at("index").get<int>(), k + 1);
    EXPECT_EQ(line.at("encoder").get<std::vector<int32_t>>(),
              std::vector<int32_t>(enc.begin(), enc.begin() + view.encoder_length));
    EXPECT_EQ(line.at("decoder").get<std::vector<int32_t>>(),
              std::vector<int32_t>(dec.begin(), dec.begin() + view.decoder_length));
    EXPECT_EQ(line.at("labels").get<std::vector<int32_t>>(),
              std::vector<int32_t>(labels.begin(), labels.begin() + view.decoder_length));
    EXPECT_EQ(line.at("encoder_length").get<int>(), view.encoder_length);
    EXPECT_EQ(line.at("decoder_length").get<int>(), view.decoder_length);
    const std::string encoder_text = line.at("encoder_text");
    const std::string decoder_text = line.at("decoder_text");
    const std::string labels_text = line.at("labels_text");
    EXPECT_NE(encoder_text.find("<extra_id_0>"), std::string::npos) << encoder_text;
    EXPECT_EQ(decoder_text.rfind("[BOS] <extra_id_0>", 0), 0u) << decoder_text;
    EXPECT_EQ(labels_text.rfind("<extra_id_0>", 0), 0u) << labels_text;
    EXPECT_EQ(labels_text.substr(labels_text.size() - 5), "[EOS]") << labels_text;
  }
  // --seq-length is the same flag as --encoder-seq-length (Megatron's alias).
  EXPECT_EQ(json_lines(inspect(
                {"--seq-length", "64", "--decoder-seq-length", "32", "--num-samples", "1"}))[0]
                .at("encoder"),
            json_lines(inspect({"--encoder-seq-length", "64", "--decoder-seq-length", "32",
                                "--num-samples", "1"}))[0]
                .at("encoder"));
}

TEST_F(InspectT5, FlagErrorsNameTheFlag) {
  const auto expect_error = [](const std::function<void()>& call, const std::string& text) {
    try {
      call();
      ADD_FAILURE() << "no error; expected " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << e.what();
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_error([] { inspect({"--encoder-seq-length", "64"}); }, "--decoder-seq-length");
  expect_error(
      [] {
        inspect({"--encoder-seq-length", "64", "--decoder-seq-length", "32"}, false);
      },
      "--vocab-extra-ids 100");
  expect_error(
      [] {
        inspect({"--seq-length", "64", "--encoder-seq-length", "64", "--decoder-seq-length", "32"});
      },
      "alias");
  expect_error([] { inspect({"--decoder-seq-length", "32"}); }, "--encoder-seq-length");
  expect_error(
      [] {
        inspect(
            {"--encoder-seq-length", "128", "--decoder-seq-length", "4", "--num-samples", "20"});
      },
      "raise --decoder-seq-length");
}

}  // namespace
}  // namespace shardlm::data
