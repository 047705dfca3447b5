// Paths to shared test data and a scratch folder helper for the data tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace shardlm::data::testing {

inline std::string shared_data(const std::string& relative) {
  return std::string(SHARDLM_TEST_DATA_DIR) + "/" + relative;
}
inline std::string golden_data(const std::string& relative) {
  return std::string(SHARDLM_SOURCE_DIR) + "/tests/golden/data/" + relative;
}
inline std::string gpt2_vocab() { return shared_data("gpt2/gpt2-vocab.json"); }
inline std::string gpt2_merges() { return shared_data("gpt2/gpt2-merges.txt"); }

// A fresh empty folder under the system temp dir, removed by the destructor.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name) {
    path_ = std::filesystem::temp_directory_path() /
            ("shardlm_data_test_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace shardlm::data::testing
