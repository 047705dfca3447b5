#include "shardlm/data/indexed_dataset_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

std::string temporary_name(const std::string& path) {
  return path + ".tmp-" + std::to_string(::getpid());
}

template <typename T>
void narrow_into(std::span<const int32_t> tokens, std::vector<unsigned char>& buffer,
                 const std::string& prefix) {
  buffer.resize(tokens.size() * sizeof(T));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        id > static_cast<int64_t>(std::numeric_limits<T>::max())) {
      throw Error(ErrorKind::kInvalidArgument,
                  prefix + ": token id " + std::to_string(id) +
                      " does not fit the dataset's token dtype; the tokenizer's vocab_size is "
                      "too small for its ids");
    }
    const T value = static_cast<T>(id);
    std::memcpy(buffer.data() + i * sizeof(T), &value, sizeof(T));
  }
}

}  // namespace

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDType dtype)
    : prefix_(std::move(prefix)),
      dtype_(dtype),
      dtype_size_(token_dtype_size(static_cast<uint8_t>(dtype)).value_or(0)),
      bin_temp_path_(temporary_name(bin_path_of(prefix_))),
      index_temp_path_(temporary_name(index_path_of(prefix_))) {
  if (dtype_size_ == 0 || dtype == TokenDType::kFloat32 || dtype == TokenDType::kFloat64) {
    throw Error(ErrorKind::kInvalidArgument, "token dtype must be an integer type");
  }
  bin_file_ = std::fopen(bin_temp_path_.c_str(), "wb");
  if (bin_file_ == nullptr) {
    throw Error(ErrorKind::kIo, "cannot create '" + bin_temp_path_ + "': " + std::strerror(errno) +
                                    " (does the output folder exist?)");
  }
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (!finished_) discard_temporaries();
}

void IndexedDatasetWriter::discard_temporaries() {
  if (bin_file_ != nullptr) std::fclose(bin_file_);
  bin_file_ = nullptr;
  std::remove(bin_temp_path_.c_str());
  std::remove(index_temp_path_.c_str());
}

void IndexedDatasetWriter::write_bin(const void* data, size_t bytes) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, bin_file_) != bytes) {
    throw Error(ErrorKind::kIo, "cannot write '" + bin_temp_path_ + "': " + std::strerror(errno));
  }
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> tokens,
                                        std::span<const int32_t> sequence_lengths) {
  if (finished_) throw Error(ErrorKind::kInternal, prefix_ + ": writer already finished");
  int64_t total = 0;
  for (int32_t length : sequence_lengths) total += length;
  if (total != static_cast<int64_t>(tokens.size())) {
    throw Error(ErrorKind::kInvalidArgument, prefix_ + ": sequence lengths sum to " +
                                                 std::to_string(total) +
                                                 " but the "
                                                 "document has " +
                                                 std::to_string(tokens.size()) + " tokens");
  }
  switch (dtype_) {
    case TokenDType::kUInt8:
      narrow_into<uint8_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kInt8:
      narrow_into<int8_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kInt16:
      narrow_into<int16_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kUInt16:
      narrow_into<uint16_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kInt32:
      narrow_into<int32_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kInt64:
      narrow_into<int64_t>(tokens, convert_buffer_, prefix_);
      break;
    case TokenDType::kFloat32:
    case TokenDType::kFloat64:
      break;
  }
  write_bin(convert_buffer_.data(), convert_buffer_.size());
  sequence_lengths_.insert(sequence_lengths_.end(), sequence_lengths.begin(),
                           sequence_lengths.end());
  document_indices_.push_back(static_cast<int64_t>(sequence_lengths_.size()));
  num_tokens_ += total;
}

void IndexedDatasetWriter::append_dataset(const IndexedDataset& other) {
  if (other.dtype() != dtype_) {
    throw Error(ErrorKind::kInvalidArgument,
                other.prefix() + ": dtype " + std::string(token_dtype_name(other.dtype())) +
                    " differs from the merged dataset's " + std::string(token_dtype_name(dtype_)) +
                    "; all inputs to a merge must come from the same tokenizer");
  }
  const auto offset = static_cast<int64_t>(sequence_lengths_.size());
  const std::vector<int32_t> lengths = other.sequence_lengths();
  sequence_lengths_.insert(sequence_lengths_.end(), lengths.begin(), lengths.end());
  for (int64_t i = 1; i <= other.num_documents(); ++i) {
    document_indices_.push_back(offset + other.document_index(i));
  }
  write_bin(other.bin_bytes().data(), other.bin_bytes().size());
  num_tokens_ += other.num_tokens();
}

void IndexedDatasetWriter::finish() {
  if (finished_) return;
  if (std::fclose(bin_file_) != 0) {
    bin_file_ = nullptr;
    throw Error(ErrorKind::kIo, "cannot close '" + bin_temp_path_ + "': " + std::strerror(errno));
  }
  bin_file_ = nullptr;

  std::FILE* index = std::fopen(index_temp_path_.c_str(), "wb");
  if (index == nullptr) {
    throw Error(ErrorKind::kIo,
                "cannot create '" + index_temp_path_ + "': " + std::strerror(errno));
  }
  const auto put = [&](const void* data, size_t bytes) {
    if (bytes > 0 && std::fwrite(data, 1, bytes, index) != bytes) {
      std::fclose(index);
      throw Error(ErrorKind::kIo,
                  "cannot write '" + index_temp_path_ + "': " + std::strerror(errno));
    }
  };
  const uint64_t version = kIndexVersion;
  const auto dtype_code = static_cast<uint8_t>(dtype_);
  const uint64_t num_sequences = sequence_lengths_.size();
  const uint64_t num_doc_entries = document_indices_.size();
  put(kIndexMagic, sizeof(kIndexMagic));
  put(&version, sizeof(version));
  put(&dtype_code, sizeof(dtype_code));
  put(&num_sequences, sizeof(num_sequences));
  put(&num_doc_entries, sizeof(num_doc_entries));
  put(sequence_lengths_.data(), sequence_lengths_.size() * sizeof(int32_t));
  std::vector<int64_t> pointers(sequence_lengths_.size());
  int64_t pointer = 0;
  for (size_t i = 0; i < pointers.size(); ++i) {
    pointers[i] = pointer;
    pointer += static_cast<int64_t>(sequence_lengths_[i]) * dtype_size_;
  }
  put(pointers.data(), pointers.size() * sizeof(int64_t));
  put(document_indices_.data(), document_indices_.size() * sizeof(int64_t));
  if (std::fclose(index) != 0) {
    throw Error(ErrorKind::kIo, "cannot close '" + index_temp_path_ + "': " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(bin_temp_path_, bin_path_of(prefix_), ec);
  if (!ec) std::filesystem::rename(index_temp_path_, index_path_of(prefix_), ec);
  if (ec) {
    throw Error(ErrorKind::kIo, "cannot move the finished dataset into place at '" + prefix_ +
                                    ".{bin,idx}': " + ec.message());
  }
  finished_ = true;
}

}  // namespace shardlm::data
