#include "shardlm/data/preprocess.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "shardlm/base/error.h"
#include "shardlm/data/indexed_dataset_writer.h"
#include "shardlm/data/sentence_splitter.h"

namespace shardlm::data {
namespace {

// One input line's result: per key, the tokens and sequence lengths; or an error message.
struct EncodedLine {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> lengths;
  std::string error;
};

EncodedLine encode_line(const std::string& line, const PreprocessOptions& options,
                        const Tokenizer& tokenizer) {
  EncodedLine result;
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    result.error = std::string("invalid JSON or UTF-8: ") + e.what();
    return result;
  }
  if (!doc.is_object()) {
    result.error = "expected a JSON object like {\"text\": \"...\"}";
    return result;
  }
  for (const std::string& key : options.json_keys) {
    const auto it = doc.find(key);
    if (it == doc.end()) {
      result.error = "no key '" + key + "' (choose keys with --json-keys)";
      return result;
    }
    std::vector<std::string> sentences;
    if (it->is_string() && options.split_sentences) {
      const std::string text = it->get<std::string>();
      for (std::string_view s : split_sentences(text, options.keep_newlines)) {
        sentences.emplace_back(s);
      }
    } else if (it->is_string()) {
      sentences.push_back(it->get<std::string>());
    } else if (it->is_array() &&
               std::all_of(it->begin(), it->end(), [](const auto& v) { return v.is_string(); })) {
      for (const auto& v : *it) sentences.push_back(v.get<std::string>());
    } else {
      result.error = "key '" + key + "' is neither a string nor a list of strings";
      return result;
    }
    std::vector<int32_t> ids;
    std::vector<int32_t> lengths;
    for (const std::string& sentence : sentences) {
      const size_t before = ids.size();
      tokenizer.encode_append(sentence, ids);
      if (ids.size() > before) lengths.push_back(static_cast<int32_t>(ids.size() - before));
    }
    if (!ids.empty() && options.append_eod) {
      ids.push_back(*tokenizer.eod_id());
      lengths.back() += 1;
    }
    result.tokens.push_back(std::move(ids));
    result.lengths.push_back(std::move(lengths));
  }
  return result;
}

// Reads lines until about `budget` bytes; returns false at end of file with nothing read.
bool read_batch(std::istream& in, int64_t budget, std::vector<std::string>& lines) {
  lines.clear();
  int64_t bytes = 0;
  std::string line;
  while (bytes < budget && std::getline(in, line)) {
    bytes += static_cast<int64_t>(line.size()) + 1;
    lines.push_back(std::move(line));
  }
  return !lines.empty();
}

}  // namespace

PreprocessReport preprocess_jsonl(const PreprocessOptions& options, const Tokenizer& tokenizer) {
  if (options.json_keys.empty()) {
    throw Error(ErrorKind::kInvalidConfig, "--json-keys needs at least one key");
  }
  if (options.workers < 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "--workers " + std::to_string(options.workers) + " must be >= 1");
  }
  if (options.append_eod && !tokenizer.eod_id()) {
    throw Error(ErrorKind::kInvalidConfig, "--append-eod: tokenizer " +
                                               std::string(tokenizer.type_name()) +
                                               " has no end-of-document token");
  }
  std::ifstream in(options.input, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, "cannot open --input '" + options.input + "'");

  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  PreprocessReport report;
  const TokenDType dtype = optimal_token_dtype(tokenizer.vocab_size());
  std::vector<std::unique_ptr<IndexedDatasetWriter>> writers;
  for (const std::string& key : options.json_keys) {
    // Megatron names the level: "sentence" with --split-sentences, else "document".
    report.output_prefixes.push_back(options.output_prefix + "_" + key +
                                     (options.split_sentences ? "_sentence" : "_document"));
    writers.push_back(std::make_unique<IndexedDatasetWriter>(report.output_prefixes.back(), dtype));
  }

  std::vector<std::string> lines;
  std::vector<EncodedLine> encoded;
  int64_t line_number = 0;
  int64_t next_log = options.log_interval;
  while (read_batch(in, options.batch_bytes, lines)) {
    encoded.assign(lines.size(), EncodedLine{});
    const size_t num_threads = std::min<size_t>(options.workers, lines.size());
    const auto work = [&](size_t worker) {
      for (size_t i = worker; i < lines.size(); i += num_threads) {
        encoded[i] = encode_line(lines[i], options, tokenizer);
      }
    };
    if (num_threads <= 1) {
      work(0);
    } else {
      std::vector<std::jthread> threads;
      for (size_t w = 0; w < num_threads; ++w) threads.emplace_back(work, w);
    }
    for (size_t i = 0; i < lines.size(); ++i) {
      ++line_number;
      report.input_bytes += static_cast<int64_t>(lines[i].size()) + 1;
      EncodedLine& line = encoded[i];
      if (!line.error.empty()) {
        if (options.skip_invalid) {
          ++report.skipped_lines;
          continue;
        }
        throw Error(ErrorKind::kCorruptData,
                    options.input + ":" + std::to_string(line_number) + ": " + line.error +
                        " (fix the line, or pass --skip-invalid to skip bad lines)");
      }
      for (size_t k = 0; k < writers.size(); ++k) {
        writers[k]->add_document(line.tokens[k], line.lengths[k]);
        report.tokens += static_cast<int64_t>(line.tokens[k].size());
      }
      ++report.documents;
      if (options.progress != nullptr && options.log_interval > 0 && report.documents >= next_log) {
        next_log += options.log_interval;
        const double s = elapsed();
        *options.progress << "Processed " << report.documents << " documents ("
                          << report.documents / s << " docs/s, " << report.input_bytes / s / 1e6
                          << " MB/s)." << std::endl;
      }
    }
  }
  if (in.bad()) throw Error(ErrorKind::kIo, "error while reading '" + options.input + "'");
  for (auto& writer : writers) writer->finish();
  report.seconds = elapsed();
  return report;
}

void merge_indexed_datasets(const std::vector<std::string>& input_prefixes,
                            const std::string& output_prefix) {
  if (input_prefixes.empty()) {
    throw Error(ErrorKind::kInvalidConfig, "merge needs at least one input prefix");
  }
  std::unique_ptr<IndexedDatasetWriter> writer;
  for (const std::string& prefix : input_prefixes) {
    const IndexedDataset dataset = IndexedDataset::open(prefix);
    if (!writer) writer = std::make_unique<IndexedDatasetWriter>(output_prefix, dataset.dtype());
    writer->append_dataset(dataset);
  }
  writer->finish();
}

}  // namespace shardlm::data
