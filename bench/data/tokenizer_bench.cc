// GPT-2 BPE encoding throughput on the shared English corpora (MB of UTF-8 text per second,
// one thread), and preprocess throughput (all stages, --workers N).
//
//   tokenizer_bench SHARED_DATA_DIR [workers]
// Built with the project (target tokenizer_bench); the Hugging Face side of the comparison is
// bench/data/hf_tokenizer_bench.py, run on the same machine in the same call.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "shardlm/data/preprocess.h"
#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"

int main(int argc, char** argv) {
  using namespace shardlm::data;
  if (argc < 2) {
    std::cerr << "usage: tokenizer_bench SHARED_DATA_DIR [workers]\n";
    return 2;
  }
  const std::string shared = argv[1];
  const int workers = argc > 2 ? std::atoi(argv[2]) : 2;
  const auto tokenizer = Gpt2BpeTokenizer::from_files(shared + "/gpt2/gpt2-vocab.json",
                                                      shared + "/gpt2/gpt2-merges.txt");
  for (const std::string corpus : {"moby_dick", "austen", "kjv_bible"}) {
    std::vector<std::string> docs;
    std::ifstream in(shared + "/corpus/" + corpus + ".jsonl");
    std::string line;
    size_t bytes = 0;
    while (std::getline(in, line)) {
      docs.push_back(nlohmann::json::parse(line)["text"].get<std::string>());
      bytes += docs.back().size();
    }
    double best = 1e9;
    size_t tokens = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      tokens = 0;
      for (const auto& d : docs) tokens += tokenizer->encode(d).size();
      best = std::min(
          best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::cout << corpus << ": " << bytes / 1e6 << " MB, " << tokens << " tokens, "
              << bytes / 1e6 / best << " MB/s (1 thread, best of 3)\n";

    PreprocessOptions options;
    options.input = shared + "/corpus/" + corpus + ".jsonl";
    options.output_prefix = (std::filesystem::temp_directory_path() / "tokenizer_bench").string();
    options.append_eod = true;
    options.workers = workers;
    const PreprocessReport report = preprocess_jsonl(options, *tokenizer);
    std::cout << "  preprocess --workers " << workers << ": "
              << report.input_bytes / 1e6 / report.seconds << " MB/s of JSONL, "
              << report.documents / report.seconds << " docs/s\n";
    for (const auto& p : report.output_prefixes) {
      std::filesystem::remove(p + ".bin");
      std::filesystem::remove(p + ".idx");
    }
  }
  return 0;
}
