// safetensors files (Hugging Face's format): an 8-byte little-endian header length N, N bytes
// of JSON {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"k": "v"}}, then the tensor bytes (offsets relative to the end of the header).
// ShardLM's checkpoint shards and Hugging Face's model.safetensors are both this format.
//
// SafetensorsReader maps the file (only touched pages are read) and validates the header once:
// size field within the file, JSON well formed, every dtype known, shape × dtype size equal to
// the byte range, every range inside the file, no two ranges overlapping. Errors name the file
// (and the tensor). SafetensorsWriter streams tensors to a file in 8 MiB slices, hashing each
// slice while it is cache-warm, and returns the XXH64 of every byte written (the file checksum
// recorded in a checkpoint's index) and of each tensor's bytes (the shard checksums), so a save
// reads every byte from memory once. On Linux it starts the disk writing each slice as soon as it
// is written (sync_file_range) and keeps at most ~768 MiB unflushed, so the final fsync does not
// have the whole file left to write.
//
// Thread contract: a reader may be shared by threads (read-only); a writer belongs to one thread.
//
//   SafetensorsWriter w;  w.add("wte", DType::kF32, {V, C}, bytes);  w.write("model.safetensors");
//   SafetensorsReader r("model.safetensors");
//   const SafetensorsEntry& e = r.entry("wte");   // dtype, shape, bytes (span into the map)
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "shardlm/ckpt/detail/mapped_file.h"
#include "shardlm/tensor/dtype.h"
#include "shardlm/tensor/shape.h"

namespace shardlm::ckpt {

// "F32" <-> DType (safetensors' dtype names). Throws kCorruptData / kUnsupported.
const char* safetensors_dtype_name(DType dtype);
DType dtype_from_safetensors_name(const std::string& name);

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;  // into the mapped file
  int64_t numel() const;
};

class SafetensorsReader {
 public:
  // Maps and validates the file. Throws Error(kIo) when it cannot be opened, Error(kCorruptData)
  // naming the file (and tensor) when the header or a byte range is wrong.
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  size_t file_size() const { return file_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Throws kCorruptData naming the file when the tensor is absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  detail::MappedFile file_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
 public:
  // Records a tensor to write; `bytes` must stay alive until write() and hold exactly
  // numel(shape) × dtype_size(dtype) bytes.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           std::span<const std::byte> bytes);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  struct Checksums {
    uint64_t file = 0;              // XXH64 of the whole file
    std::vector<uint64_t> tensors;  // XXH64 of each tensor's bytes, in add() order
  };
  // Writes the file (and fsyncs it). Throws Error(kIo) when a write, the fsync or a writeback
  // (reported early by sync_file_range) fails.
  Checksums write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const std::byte> bytes;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace shardlm::ckpt
