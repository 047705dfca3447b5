// A whole file mapped read-only (RAII, move-only): how checkpoint readers touch only the pages
// of the shards they need. Empty files map to an empty span.
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace shardlm::ckpt::detail {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // Error(kIo) naming the file
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

}  // namespace shardlm::ckpt::detail
