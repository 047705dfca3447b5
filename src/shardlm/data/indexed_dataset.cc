#include "shardlm/data/indexed_dataset.h"

#include <cstring>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw Error(ErrorKind::kCorruptData,
              path + ": " + what +
                  " (is the .bin/.idx pair complete and from the same preprocess run? "
                  "re-run `shardlm preprocess` to regenerate it)");
}

template <typename T>
void convert_tokens(const std::byte* src, std::span<int32_t> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    T value;
    std::memcpy(&value, src + i * sizeof(T), sizeof(T));
    out[i] = static_cast<int32_t>(value);
  }
}

}  // namespace

std::string index_path_of(const std::string& prefix) { return prefix + ".idx"; }
std::string bin_path_of(const std::string& prefix) { return prefix + ".bin"; }

IndexedDataset IndexedDataset::open(const std::string& prefix) {
  MappedFile index(index_path_of(prefix));
  MappedFile bin(bin_path_of(prefix));
  IndexedDataset ds(prefix, std::move(index), std::move(bin));
  ds.validate();
  return ds;
}

IndexedDataset::IndexedDataset(std::string prefix, MappedFile index, MappedFile bin)
    : prefix_(std::move(prefix)), index_(std::move(index)), bin_(std::move(bin)) {}

template <typename T>
T IndexedDataset::read_index_at(size_t byte_offset) const {
  T value;
  std::memcpy(&value, index_.bytes().data() + byte_offset, sizeof(T));
  return value;
}

void IndexedDataset::validate() {
  const std::string& path = index_.path();
  const size_t size = index_.size();
  if (size < kIndexHeaderBytes) {
    corrupt(path, "truncated: the header needs " + std::to_string(kIndexHeaderBytes) +
                      " bytes but the file has " + std::to_string(size));
  }
  if (std::memcmp(index_.bytes().data(), kIndexMagic, sizeof(kIndexMagic)) != 0) {
    corrupt(path,
            "bad magic: not a Megatron indexed dataset index (expected it to start with "
            "\"MMIDIDX\\0\\0\")");
  }
  const auto version = read_index_at<uint64_t>(9);
  if (version != kIndexVersion) {
    corrupt(path, "unsupported version " + std::to_string(version) + " (only version " +
                      std::to_string(kIndexVersion) + " exists)");
  }
  const auto dtype_code = read_index_at<uint8_t>(17);
  const std::optional<int> dtype_size = token_dtype_size(dtype_code);
  if (!dtype_size) corrupt(path, "unknown dtype code " + std::to_string(dtype_code));
  dtype_ = static_cast<TokenDType>(dtype_code);
  if (dtype_ == TokenDType::kFloat32 || dtype_ == TokenDType::kFloat64) {
    corrupt(path, "dtype " + std::string(token_dtype_name(dtype_)) + " cannot hold token ids");
  }
  dtype_size_ = *dtype_size;
  const auto num_sequences = read_index_at<uint64_t>(18);
  const auto num_doc_entries = read_index_at<uint64_t>(26);
  // Bound the counts before multiplying so a garbage header cannot overflow.
  if (num_sequences > size || num_doc_entries > size) {
    corrupt(path, "header counts (" + std::to_string(num_sequences) + " sequences, " +
                      std::to_string(num_doc_entries) +
                      " document-index entries) exceed what the file can hold");
  }
  const uint64_t expected = kIndexHeaderBytes + 12 * num_sequences + 8 * num_doc_entries;
  if (size != expected) {
    corrupt(path, std::string(size < expected ? "truncated" : "trailing bytes") + ": " +
                      std::to_string(num_sequences) + " sequences and " +
                      std::to_string(num_doc_entries) + " document-index entries need " +
                      std::to_string(expected) + " bytes but the file has " + std::to_string(size));
  }
  num_sequences_ = static_cast<int64_t>(num_sequences);
  num_doc_index_entries_ = static_cast<int64_t>(num_doc_entries);
  lengths_offset_ = kIndexHeaderBytes;
  pointers_offset_ = lengths_offset_ + 4 * num_sequences;
  doc_index_offset_ = pointers_offset_ + 8 * num_sequences;

  int64_t expected_pointer = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t length = sequence_length(i);
    const int64_t pointer = sequence_pointer(i);
    if (length < 0) corrupt(path, "sequence " + std::to_string(i) + " has negative length");
    if (pointer != expected_pointer) {
      corrupt(path, "sequence " + std::to_string(i) + " starts at byte " + std::to_string(pointer) +
                        " of the .bin but the lengths before it put "
                        "it at " +
                        std::to_string(expected_pointer));
    }
    expected_pointer += static_cast<int64_t>(length) * dtype_size_;
  }
  num_tokens_ = expected_pointer / dtype_size_;
  if (num_doc_index_entries_ < 1) corrupt(path, "the document index is empty (needs >= 1 entry)");
  int64_t previous = 0;
  for (int64_t i = 0; i < num_doc_index_entries_; ++i) {
    const int64_t entry = document_index(i);
    if ((i == 0 && entry != 0) || entry < previous || entry > num_sequences_) {
      corrupt(path, "document index entry " + std::to_string(i) + " = " + std::to_string(entry) +
                        " is out of order (entries must rise from 0 to " +
                        std::to_string(num_sequences_) + ")");
    }
    previous = entry;
  }
  if (previous != num_sequences_) {
    corrupt(path, "the document index ends at " + std::to_string(previous) + ", not at the " +
                      "sequence count " + std::to_string(num_sequences_));
  }
  if (static_cast<int64_t>(bin_.size()) != expected_pointer) {
    throw Error(ErrorKind::kCorruptData, bin_.path() + ": has " + std::to_string(bin_.size()) +
                                             " bytes but " + path + " describes " +
                                             std::to_string(expected_pointer) + " bytes (" +
                                             std::to_string(num_tokens_) + " tokens of " +
                                             std::string(token_dtype_name(dtype_)) +
                                             "); the .bin is truncated or belongs to another .idx");
  }
}

int32_t IndexedDataset::sequence_length(int64_t sequence) const {
  return read_index_at<int32_t>(lengths_offset_ + 4 * static_cast<size_t>(sequence));
}

int64_t IndexedDataset::sequence_pointer(int64_t sequence) const {
  return read_index_at<int64_t>(pointers_offset_ + 8 * static_cast<size_t>(sequence));
}

int64_t IndexedDataset::document_index(int64_t entry) const {
  return read_index_at<int64_t>(doc_index_offset_ + 8 * static_cast<size_t>(entry));
}

std::vector<int32_t> IndexedDataset::sequence_lengths() const {
  std::vector<int32_t> lengths(num_sequences_);
  if (num_sequences_ > 0) {
    std::memcpy(lengths.data(), index_.bytes().data() + lengths_offset_, 4 * lengths.size());
  }
  return lengths;
}

void IndexedDataset::read_tokens(int64_t sequence, int64_t offset, std::span<int32_t> out) const {
  if (sequence < 0 || sequence >= num_sequences_ || offset < 0 ||
      offset + static_cast<int64_t>(out.size()) > sequence_length(sequence)) {
    throw Error(ErrorKind::kInvalidArgument,
                prefix_ + ": read of tokens [" + std::to_string(offset) + ", " +
                    std::to_string(offset + static_cast<int64_t>(out.size())) + ") of sequence " +
                    std::to_string(sequence) + " is out of range");
  }
  const std::byte* src = bin_.bytes().data() + sequence_pointer(sequence) + offset * dtype_size_;
  switch (dtype_) {
    case TokenDType::kUInt8:
      return convert_tokens<uint8_t>(src, out);
    case TokenDType::kInt8:
      return convert_tokens<int8_t>(src, out);
    case TokenDType::kInt16:
      return convert_tokens<int16_t>(src, out);
    case TokenDType::kUInt16:
      return convert_tokens<uint16_t>(src, out);
    case TokenDType::kInt32:
      return convert_tokens<int32_t>(src, out);
    case TokenDType::kInt64:
      return convert_tokens<int64_t>(src, out);
    case TokenDType::kFloat32:
    case TokenDType::kFloat64:
      break;
  }
}

std::vector<int32_t> IndexedDataset::sequence(int64_t sequence) const {
  if (sequence < 0 || sequence >= num_sequences_) {
    throw Error(ErrorKind::kInvalidArgument, prefix_ + ": sequence " + std::to_string(sequence) +
                                                 " is out of range [0, " +
                                                 std::to_string(num_sequences_) + ")");
  }
  std::vector<int32_t> tokens(sequence_length(sequence));
  read_tokens(sequence, 0, tokens);
  return tokens;
}

}  // namespace shardlm::data
