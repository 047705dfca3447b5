// `shardlm inspect-data` from the outside: the windows it prints for Megatron's moby_dick setup
// (shared/data/megatron/README.md: --split 90,8,2 --seq-length 256 --seed 1234) equal the windows
// Megatron Core's GPTDataset produced (samples.json); bad flags exit 2 with one line.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/run_command.h"

namespace {

struct Result {
  int exit_code;
  std::string out;  // stdout only (stderr goes to err)
  std::string err;
};

class InspectData : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = std::filesystem::temp_directory_path() /
             ("shardlm_inspect_data_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(cache_);
    std::filesystem::create_directories(cache_);
  }
  void TearDown() override { std::filesystem::remove_all(cache_); }

  Result run(const std::string& args) {
    const std::string err_file = (cache_ / "stderr.txt").string();
    const std::string cmd = std::string(SHARDLM_BINARY_PATH) + " inspect-data --data-path " +
                            data_dir() + "/megatron/moby_dick_text_document --split 90,8,2 " +
                            "--seq-length 256 --seed 1234 --data-cache-path " + cache_.string() +
                            "/cache " + args + " 2>" + err_file;
    const shardlm::testing::CommandResult r = shardlm::testing::run_command(cmd);
    std::ifstream in(err_file);
    std::stringstream err;
    err << in.rdbuf();
    return {r.exit_code, r.output, err.str()};
  }

  static std::string data_dir() { return SHARDLM_TEST_DATA_DIR; }

  static const nlohmann::json& reference() {
    static const nlohmann::json j = [] {
      std::ifstream in(data_dir() + "/megatron/samples.json");
      return nlohmann::json::parse(in);
    }();
    return j;
  }

  static std::vector<nlohmann::json> lines(const std::string& out) {
    std::vector<nlohmann::json> v;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) v.push_back(nlohmann::json::parse(line));
    return v;
  }

  // Prints samples [start, start+count) of `key`'s split built for its requested sample count
  // and compares them with Megatron's.
  void expect_matches(const std::string& key, const std::string& dataset, int start, int count) {
    const nlohmann::json& ref = reference()[key];
    const int64_t requested = ref["num_samples_requested"];
    const Result r = run("--dataset " + dataset + " --start " + std::to_string(start) +
                         " --num-samples " + std::to_string(count) + " --split-samples " +
                         std::to_string(requested));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto got = lines(r.out);
    ASSERT_EQ(static_cast<int>(got.size()), count);
    std::map<int64_t, const nlohmann::json*> by_index;
    for (const auto& s : ref["samples"]) by_index[s["index"].get<int64_t>()] = &s;
    for (int i = 0; i < count; ++i) {
      const int64_t k = start + i;
      EXPECT_EQ(got[i]["index"].get<int64_t>(), k);
      ASSERT_TRUE(by_index.count(k)) << key << " has no sample " << k;
      const auto tokens = got[i]["tokens"].get<std::vector<int64_t>>();
      EXPECT_EQ(tokens.size(), 257u);
      EXPECT_EQ(tokens, (*by_index[k])["text"].get<std::vector<int64_t>>()) << key << " " << k;
    }
  }

  std::filesystem::path cache_;
};

TEST_F(InspectData, TrainWindowsMatchMegatron) { expect_matches("train", "train", 0, 32); }

TEST_F(InspectData, TrainWithSeparateFinalEpochMatchesMegatron) {
  expect_matches("train_1500", "train", 5, 20);
}

TEST_F(InspectData, ValidWindowsMatchMegatron) { expect_matches("valid", "valid", 0, 40); }

TEST_F(InspectData, TestWindowsMatchMegatron) { expect_matches("test", "test", 3, 7); }

TEST_F(InspectData, DefaultSplitSamplesIsStartPlusCount) {
  // valid was requested with 40 samples: --start 10 --num-samples 30 builds the same split.
  const Result r = run("--dataset valid --start 10 --num-samples 30");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = lines(r.out);
  ASSERT_EQ(got.size(), 30u);
  const auto& ref = reference()["valid"]["samples"];
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(got[i]["tokens"].get<std::vector<int64_t>>(),
              ref[10 + i]["text"].get<std::vector<int64_t>>());
  }
}

TEST_F(InspectData, DecodeAddsText) {
  const Result r = run("--dataset valid --num-samples 1 --decode --tokenizer-type "
                       "GPT2BPETokenizer --vocab-file " + data_dir() +
                       "/gpt2/gpt2-vocab.json --merge-file " + data_dir() +
                       "/gpt2/gpt2-merges.txt");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = lines(r.out);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_TRUE(got[0].contains("text"));
  EXPECT_GT(got[0]["text"].get<std::string>().size(), 500u);
}

TEST_F(InspectData, BadFlagsExitTwoWithOneLine) {
  for (const std::string args :
       {"--dataset bogus", "--decode --num-samples 1", "--dataset valid --start -1",
        "--num-samples 5 --split-samples 3"}) {
    const Result r = run(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

}  // namespace
