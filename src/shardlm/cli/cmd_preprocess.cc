// `shardlm preprocess`: Megatron-LM's tools/preprocess_data.py with the same flags, writing
// byte-identical PREFIX_KEY_document.{bin,idx} (PREFIX_KEY_sentence with --split-sentences); and `shardlm merge-datasets`, Megatron's
// tools/merge_datasets.py (both are registered by register_preprocess: the data layer's
// commands). Flags that Megatron has but ShardLM does not implement are accepted only at their
// defaults and otherwise rejected with a one-line "not supported" error (exit code 2).
//
//   shardlm preprocess --input corpus.jsonl --output-prefix out/corpus
//       --tokenizer-type GPT2BPETokenizer --vocab-file gpt2-vocab.json
//       --merge-file gpt2-merges.txt --append-eod --workers 4   (one command line)
//   shardlm merge-datasets --input DIR --output-prefix out/merged
#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/data/preprocess.h"
#include "shardlm/data/tokenizer/tokenizer_factory.h"

namespace shardlm::cli {
namespace {

struct PreprocessFlags {
  data::PreprocessOptions options;
  data::TokenizerOptions tokenizer;
  int64_t vocab_size = 786;  // Megatron's default, used by NullTokenizer
  bool split_sentences = false;
  bool keep_newlines = false;
  std::string lang = "english";
  int partitions = 1;
  bool keep_sequential_samples = false;
};

void run_preprocess(PreprocessFlags& flags) {
  if (flags.lang != "english") {
    throw Error(ErrorKind::kInvalidConfig,
                "--lang " + flags.lang +
                    " is not supported: the --split-sentences rules are for English (use "
                    "--lang english, or pre-split: {\"text\": [\"sentence 1\", \"sentence 2\"]})");
  }
  flags.options.split_sentences = flags.split_sentences;
  flags.options.keep_newlines = flags.keep_newlines;
  if (flags.partitions != 1) {
    throw Error(ErrorKind::kInvalidConfig,
                "--partitions " + std::to_string(flags.partitions) +
                    " is not supported; ShardLM streams the input with --workers threads and "
                    "needs no partitions (use --partitions 1)");
  }
  flags.tokenizer.vocab_size = flags.vocab_size;
  const std::unique_ptr<data::Tokenizer> tokenizer = data::make_tokenizer(flags.tokenizer);
  flags.options.progress = &std::cerr;
  const data::PreprocessReport report = data::preprocess_jsonl(flags.options, *tokenizer);
  std::cout << "Processed " << report.documents << " documents, " << report.tokens << " tokens, "
            << report.input_bytes / 1e6 << " MB in " << report.seconds << " s ("
            << report.documents / std::max(report.seconds, 1e-9) << " docs/s, "
            << report.input_bytes / 1e6 / std::max(report.seconds, 1e-9) << " MB/s)";
  if (report.skipped_lines > 0) std::cout << "; skipped " << report.skipped_lines << " bad lines";
  std::cout << "\n";
  for (const auto& prefix : report.output_prefixes) {
    std::cout << "Wrote " << prefix << ".bin and " << prefix << ".idx\n";
  }
}

// Megatron's merge_datasets.py: every PREFIX with both .bin and .idx in the folder, sorted.
void run_merge(const std::string& input_dir, const std::string& output_prefix) {
  std::set<std::string> bins, idxs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(input_dir, ec)) {
    const auto path = entry.path();
    const std::string stem = (path.parent_path() / path.stem()).string();
    if (path.extension() == ".bin") bins.insert(stem);
    if (path.extension() == ".idx") idxs.insert(stem);
  }
  if (ec) throw Error(ErrorKind::kIo, "cannot list --input '" + input_dir + "': " + ec.message());
  std::vector<std::string> prefixes;
  for (const auto& prefix : idxs) {
    if (!bins.count(prefix)) {
      throw Error(ErrorKind::kIo, prefix + ".idx has no matching " + prefix + ".bin");
    }
    prefixes.push_back(prefix);
  }
  if (prefixes.empty()) {
    throw Error(ErrorKind::kInvalidConfig, "--input '" + input_dir + "' holds no .bin/.idx pairs");
  }
  data::merge_indexed_datasets(prefixes, output_prefix);
  std::cout << "Merged " << prefixes.size() << " datasets into " << output_prefix << "\n";
}

}  // namespace

void register_preprocess(CLI::App& app) {
  auto flags = std::make_shared<PreprocessFlags>();
  CLI::App* cmd = app.add_subcommand(
      "preprocess",
      "Tokenize JSON lines into a Megatron indexed dataset (tools/preprocess_data.py)");
  data::PreprocessOptions& o = flags->options;
  const char* in = "input data";
  cmd->add_option("--input", o.input, "Path to input JSON lines")->required()->group(in);
  cmd->add_option("--json-keys", o.json_keys, "Keys to extract from the JSON (default: text)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(in);
  cmd->add_flag("--split-sentences", flags->split_sentences,
                "Split documents into sentences (one sequence each; output PREFIX_KEY_sentence) "
                "for BERT. Rule-based: approximates Megatron's NLTK punkt splitter (ends at . ! ? "
                "before an upper-case start, not after abbreviations/initials; blank lines split)")
      ->group(in);
  cmd->add_flag("--keep-newlines", flags->keep_newlines,
                "Keep newlines between sentences when splitting sentences")
      ->group(in);
  cmd->add_flag("--skip-invalid", o.skip_invalid,
                "Skip (and count) lines that are not valid JSON with the keys, instead of failing")
      ->group(in);
  const char* tok = "tokenizer";
  cmd->add_option("--tokenizer-type", flags->tokenizer.type, "What type of tokenizer to use")
      ->required()
      ->group(tok);
  cmd->add_option("--tokenizer-model", flags->tokenizer.tokenizer_model,
                  "SentencePiece .model, or tokenizer.json (or its folder) for "
                  "HuggingFaceTokenizer")
      ->group(tok);
  cmd->add_option("--vocab-file", flags->tokenizer.vocab_file, "Path to the vocab file")
      ->group(tok);
  cmd->add_option("--vocab-size", flags->vocab_size, "Vocabulary size for NullTokenizer")
      ->group(tok);
  cmd->add_option("--merge-file", flags->tokenizer.merge_file, "Path to the BPE merge file")
      ->group(tok);
  cmd->add_flag("--append-eod", o.append_eod, "Append an <eod> token to the end of a document")
      ->group(tok);
  cmd->add_option("--lang", flags->lang, "Language for --split-sentences (english only)")
      ->group(tok);
  const char* out = "output data";
  cmd->add_option("--output-prefix", o.output_prefix, "Path to binary output file without suffix")
      ->required()
      ->group(out);
  const char* rt = "runtime";
  cmd->add_option("--workers", o.workers, "Number of worker threads")->required()->group(rt);
  cmd->add_option("--partitions", flags->partitions, "Must be 1 (ShardLM streams the input)")
      ->group(rt);
  cmd->add_option("--log-interval", o.log_interval, "Documents between progress lines")->group(rt);
  cmd->add_flag("--keep-sequential-samples", flags->keep_sequential_samples,
                "Accepted for compatibility: ShardLM always keeps input order")
      ->group(rt);
  cmd->callback([flags] { run_preprocess(*flags); });

  auto merge_input = std::make_shared<std::string>();
  auto merge_output = std::make_shared<std::string>();
  CLI::App* merge = app.add_subcommand(
      "merge-datasets", "Concatenate the indexed datasets in a folder (tools/merge_datasets.py)");
  merge->add_option("--input", *merge_input, "Folder holding PREFIX.bin/PREFIX.idx pairs")
      ->required();
  merge->add_option("--output-prefix", *merge_output, "Output PREFIX (without .bin/.idx)")
      ->required();
  merge->callback([merge_input, merge_output] { run_merge(*merge_input, *merge_output); });
}

}  // namespace shardlm::cli
