// preprocess_jsonl: the engine of `shardlm preprocess`, Megatron's tools/preprocess_data.py.
// Reads JSON lines ({"text": "..."} per document), tokenizes the chosen keys with several worker
// threads, and writes one indexed dataset per key, PREFIX_KEY_document.{bin,idx}, byte-identical
// to Megatron's for the same tokenizer (one sequence per document; a key whose value is a list
// of strings gives one sequence per string, as Megatron does for pre-split sentences).
// With split_sentences (--split-sentences, for BERT) each string is cut into sentences by
// split_sentences() (sentence_splitter.h, an approximation of Megatron's NLTK punkt), each
// non-empty sentence is one sequence, the document ends after its last one, and the output is
// PREFIX_KEY_sentence.{bin,idx} as in Megatron. Sentences (or list items) that encode to no
// tokens are skipped; a document with no tokens is still written, with no sequences, as Megatron
// does.
//
// Streaming: the input is read in batches of bounded size, so memory does not grow with the
// corpus (only the index: 12 bytes per document). Output appears only when complete (see
// IndexedDatasetWriter). Bad lines (invalid JSON or UTF-8, missing key, non-string value) throw
// Error(kCorruptData) naming file and line, or are counted and skipped with skip_invalid.
//
//   PreprocessOptions o;
//   o.input = "moby_dick.jsonl"; o.output_prefix = "out/moby_dick"; o.append_eod = true;
//   PreprocessReport r = preprocess_jsonl(o, *tokenizer);   // writes out/moby_dick_text_document.*
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "shardlm/data/tokenizer/tokenizer.h"

namespace shardlm::data {

struct PreprocessOptions {
  std::string input;  // JSON-lines file
  std::vector<std::string> json_keys{"text"};
  std::string output_prefix;
  bool append_eod = false;
  bool split_sentences = false;  // --split-sentences
  bool keep_newlines = false;    // --keep-newlines (with split_sentences)
  int workers = 1;
  bool skip_invalid = false;
  int64_t batch_bytes = 8 << 20;  // input read per batch (bounds memory with the workers)
  int64_t log_interval = 1000;    // documents between progress lines; 0 = none
  std::ostream* progress = nullptr;
};

struct PreprocessReport {
  int64_t documents = 0;
  int64_t skipped_lines = 0;
  int64_t tokens = 0;  // per key summed, EODs included
  int64_t input_bytes = 0;
  double seconds = 0;
  std::vector<std::string> output_prefixes;  // PREFIX_KEY_document (or _sentence) per key
};

PreprocessReport preprocess_jsonl(const PreprocessOptions& options, const Tokenizer& tokenizer);

// Megatron's tools/merge_datasets.py: concatenates datasets (same dtype) into output_prefix.
void merge_indexed_datasets(const std::vector<std::string>& input_prefixes,
                            const std::string& output_prefix);

}  // namespace shardlm::data
