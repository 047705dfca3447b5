// IndexedDatasetWriter: writes a Megatron indexed dataset PREFIX.bin + PREFIX.idx byte-identical
// to Megatron's IndexedDatasetBuilder (format: indexed_dataset_format.h).
//
// Tokens stream to "PREFIX.bin.tmp-<pid>"; finish() writes the index to a temporary name too and
// only then renames both into place, so an interrupted run never leaves a plausible-looking
// half-written pair. A writer destroyed without finish() deletes its temporary files.
// Memory: 12 bytes per sequence + 8 per document for the index, nothing per token.
// Not thread-safe (one writer per output); move-only.
//
//   IndexedDatasetWriter w("out/corpus_text_document", TokenDType::kUInt16);
//   w.add_document(ids, {static_cast<int32_t>(ids.size())});
//   w.append_dataset(IndexedDataset::open("other_text_document"));   // merge (merge_datasets.py)
//   w.finish();
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "shardlm/data/indexed_dataset.h"
#include "shardlm/data/indexed_dataset_format.h"

namespace shardlm::data {

class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::string prefix, TokenDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One document made of sequences with the given lengths (summing to tokens.size()); Megatron's
  // add_document. A document may have no sequences (Megatron writes those for empty texts).
  void add_document(std::span<const int32_t> tokens, std::span<const int32_t> sequence_lengths);
  // Appends every sequence and document of another dataset of the same dtype.
  void append_dataset(const IndexedDataset& other);
  // Writes the index and renames both files into place.
  void finish();

  int64_t num_sequences() const { return static_cast<int64_t>(sequence_lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t bytes_written() const { return num_tokens_ * dtype_size_; }

 private:
  void write_bin(const void* data, size_t bytes);
  void discard_temporaries();

  std::string prefix_;
  TokenDType dtype_;
  int dtype_size_;
  std::string bin_temp_path_;
  std::string index_temp_path_;
  std::FILE* bin_file_ = nullptr;
  std::vector<int32_t> sequence_lengths_;
  std::vector<int64_t> document_indices_{0};
  std::vector<unsigned char> convert_buffer_;
  int64_t num_tokens_ = 0;
  bool finished_ = false;
};

}  // namespace shardlm::data
