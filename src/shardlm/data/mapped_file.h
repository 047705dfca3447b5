// MappedFile: a whole file mapped read-only into memory (RAII, move-only). Empty files map to an
// empty span. Safe to read from many threads.
//
//   MappedFile f("corpus_text_document.bin");   // Error(kIo) naming the file if it cannot
//   std::span<const std::byte> bytes = f.bytes();
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace shardlm::data {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void unmap();

  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace shardlm::data
