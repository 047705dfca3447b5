// `shardlm preprocess` is memory bounded: a corpus ten times larger must not need ten times the
// RAM. Runs the binary on a ~1 MB and a ~12 MB synthetic JSONL (NullTokenizer, so the tokenizer
// is not what is measured) and compares the peak RSS of each run (wait4's rusage of that child).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

void write_corpus(const std::string& path, int64_t bytes) {
  std::ofstream out(path);
  std::mt19937 rng(7);
  int64_t written = 0;
  std::string line;
  while (written < bytes) {
    line = "{\"text\": \"";
    const int words = 50 + static_cast<int>(rng() % 400);
    for (int w = 0; w < words; ++w) {
      if (w) line += ' ';
      line += std::to_string(rng() % 50000);
    }
    line += "\"}\n";
    out << line;
    written += static_cast<int64_t>(line.size());
  }
}

// Peak resident set size in KiB of one `shardlm preprocess` run.
long peak_rss_kib(const std::string& input, const std::string& prefix) {
  std::vector<std::string> args = {SHARDLM_BINARY_PATH, "preprocess", "--input", input,
                                   "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer",
                                   "--vocab-size", "50001", "--append-eod", "--workers", "2",
                                   "--log-interval", "1000000000"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    // Quiet child: progress and summary lines are not what this test checks.
    if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  EXPECT_EQ(wait4(pid, &status, 0, &usage), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "preprocess failed: " << status;
  return usage.ru_maxrss;
}

TEST(PreprocessMemory, TenTimesTheCorpusDoesNotNeedTenTimesTheMemory) {
  testing::ScratchDir dir("preprocess_memory");
  const std::string small = dir.file("small.jsonl"), large = dir.file("large.jsonl");
  // 4 MB already fills preprocess's fixed buffers, so 10x that must cost (almost) nothing more;
  // a corpus-proportional implementation would need ~10x.
  write_corpus(small, 4 << 20);
  write_corpus(large, 40 << 20);
  const long small_kib = peak_rss_kib(small, dir.file("small"));
  const long large_kib = peak_rss_kib(large, dir.file("large"));
  std::cout << "peak RSS: 4 MB corpus " << small_kib << " KiB, 40 MB corpus " << large_kib
            << " KiB\n";
  EXPECT_GT(std::filesystem::file_size(dir.file("large_text_document.bin")),
            8 * std::filesystem::file_size(dir.file("small_text_document.bin")));
  EXPECT_LT(large_kib, 2 * small_kib)
      << "peak RSS grew from " << small_kib << " KiB to " << large_kib << " KiB";
}

}  // namespace
}  // namespace shardlm::data
