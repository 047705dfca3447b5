// IndexedDataset: read-only, memory-mapped view of a Megatron indexed dataset PREFIX.bin +
// PREFIX.idx (format: indexed_dataset_format.h, docs/formats/indexed_dataset.md).
//
// Opening validates everything a reader relies on: magic, version, dtype, that the .idx size
// equals what its counts imply, that lengths are non-negative and pointers contiguous, that the
// document index runs from 0 to N without going backwards, and that the .bin size matches the
// pointers. Anything wrong throws Error(kCorruptData) naming the file and the inconsistency;
// missing files throw Error(kIo).
//
// Thread safety: immutable after construction; concurrent reads are safe. Move-only.
//
//   IndexedDataset ds = IndexedDataset::open("data/moby_dick_text_document");
//   std::vector<int32_t> doc0 = ds.sequence(0);
//   ds.read_tokens(/*sequence=*/3, /*offset=*/10, out_span);   // out_span.size() tokens
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shardlm/data/indexed_dataset_format.h"
#include "shardlm/data/mapped_file.h"

namespace shardlm::data {

std::string index_path_of(const std::string& prefix);  // PREFIX.idx
std::string bin_path_of(const std::string& prefix);    // PREFIX.bin

class IndexedDataset {
 public:
  static IndexedDataset open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  int dtype_size() const { return dtype_size_; }
  int64_t num_sequences() const { return num_sequences_; }
  // Number of documents (document-index entries minus one).
  int64_t num_documents() const { return num_doc_index_entries_ - 1; }
  int64_t num_tokens() const { return num_tokens_; }

  int32_t sequence_length(int64_t sequence) const;
  int64_t sequence_pointer(int64_t sequence) const;  // byte offset into .bin
  int64_t document_index(int64_t entry) const;       // entry in [0, num_documents()]
  std::vector<int32_t> sequence_lengths() const;

  // Copies tokens [offset, offset + out.size()) of a sequence into out as int32.
  void read_tokens(int64_t sequence, int64_t offset, std::span<int32_t> out) const;
  std::vector<int32_t> sequence(int64_t sequence) const;
  // Raw .bin bytes of a sequence range (for merging datasets without re-encoding).
  std::span<const std::byte> bin_bytes() const { return bin_.bytes(); }

 private:
  IndexedDataset(std::string prefix, MappedFile index, MappedFile bin);
  void validate();
  template <typename T>
  T read_index_at(size_t byte_offset) const;

  std::string prefix_;
  MappedFile index_;
  MappedFile bin_;
  TokenDType dtype_ = TokenDType::kUInt16;
  int dtype_size_ = 2;
  int64_t num_sequences_ = 0;
  int64_t num_doc_index_entries_ = 0;
  int64_t num_tokens_ = 0;
  size_t lengths_offset_ = 0;
  size_t pointers_offset_ = 0;
  size_t doc_index_offset_ = 0;
};

}  // namespace shardlm::data
