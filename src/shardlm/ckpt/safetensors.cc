#include "shardlm/ckpt/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checksum.h"
#include "shardlm/ckpt/format.h"

namespace shardlm::ckpt {

namespace {
struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kNames[] = {
    {DType::kF64, "F64"},  {DType::kF32, "F32"},  {DType::kBF16, "BF16"},
    {DType::kF16, "F16"},  {DType::kI32, "I32"},  {DType::kI64, "I64"},
    {DType::kU16, "U16"},  {DType::kF8E4M3, "F8_E4M3"}, {DType::kF8E5M2, "F8_E5M2"},
};

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw Error(ErrorKind::kCorruptData,
              "safetensors file '" + path + "': " + what +
                  "; the file is damaged or not a safetensors file (re-save or re-download it)");
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kIo, "cannot write '" + path + "': " + std::strerror(errno));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// Starts the disk on each written range at once and bounds the unflushed (dirty) data. Without
// it, on a machine with much memory the kernel begins writeback late, so a big file is first
// copied into the page cache and then almost all of it written by the final fsync, one after the
// other; with it the two overlap. Only a hint: the fsync at the end makes the file durable.
class WritebackPacer {
 public:
  WritebackPacer(int fd, const std::string& path) : fd_(fd), path_(path) {}

  // The file's bytes [0, end) have been written.
  void written(uint64_t end) {
#ifdef __linux__
    // Whole MiBs only (a multiple of any page size), so no partly written page is flushed twice.
    const uint64_t to = end / kAlign * kAlign;
    if (enabled_ && to > started_ && hint(started_, to - started_, SYNC_FILE_RANGE_WRITE))
      started_ = to;
    // Once window k is under way, wait for window k-2: at most ~3 windows stay unflushed.
    while (enabled_ && waited_ + 3 * kWindow <= started_ &&
           hint(waited_, kWindow,
                SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER))
      waited_ += kWindow;
#else
    (void)end;
    (void)fd_;
#endif
  }

 private:
  static constexpr uint64_t kAlign = uint64_t{1} << 20;
  static constexpr uint64_t kWindow = uint64_t{256} << 20;

#ifdef __linux__
  bool hint(uint64_t offset, uint64_t size, unsigned flags) {
    if (::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(size), flags) ==
        0)
      return true;
    if (errno == EINVAL || errno == ENOSYS || errno == ESPIPE || errno == EOPNOTSUPP) {
      enabled_ = false;  // not supported here: the fsync alone does the work, as before
      return false;
    }
    // A writeback error (EIO, ENOSPC, ...). Waiting on a range consumes the descriptor's error
    // report, so the final fsync would not see it again: fail now.
    throw Error(ErrorKind::kIo, "cannot write '" + path_ + "': " + std::strerror(errno));
  }
#endif

  int fd_;
  const std::string& path_;
  bool enabled_ = true;
  uint64_t started_ = 0;  // writeback started for [0, started_)
  uint64_t waited_ = 0;   // writeback finished for [0, waited_)
};
}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  for (const DTypeName& n : kNames)
    if (n.dtype == dtype) return n.name;
  throw Error(ErrorKind::kUnsupported,
              std::string("dtype ") + dtype_name(dtype) + " has no safetensors name");
}

DType dtype_from_safetensors_name(const std::string& name) {
  for (const DTypeName& n : kNames)
    if (name == n.name) return n.dtype;
  throw Error(ErrorKind::kUnsupported, "safetensors dtype '" + name +
                                           "' is not supported (F64, F32, BF16, F16, I32, I64, "
                                           "U16, F8_E4M3, F8_E5M2)");
}

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : file_(path) {
  const auto bytes = file_.bytes();
  if (bytes.size() < 8)
    corrupt(path, "only " + std::to_string(bytes.size()) + " bytes (truncated: no header)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian
  if (header_len > kMaxSafetensorsHeaderBytes || header_len > bytes.size() - 8)
    corrupt(path, "header length " + std::to_string(header_len) + " exceeds the file size " +
                      std::to_string(bytes.size()) + " (truncated)");
  const char* hp = reinterpret_cast<const char*>(bytes.data() + 8);
  nlohmann::json header = nlohmann::json::parse(hp, hp + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) corrupt(path, "header is not a JSON object");
  const size_t data_begin = 8 + header_len;
  const size_t data_size = bytes.size() - data_begin;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) corrupt(path, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    const nlohmann::json& v = it.value();
    const std::string where = "tensor '" + it.key() + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets") || !v["dtype"].is_string() || !v["shape"].is_array() ||
        !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      corrupt(path, where + " lacks dtype / shape / data_offsets");
    SafetensorsEntry e;
    e.name = it.key();
    try {
      e.dtype = dtype_from_safetensors_name(v["dtype"].get<std::string>());
    } catch (const Error& err) {
      throw Error(err.kind(), "safetensors file '" + path + "', " + where + ": " + err.what());
    }
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        corrupt(path, where + " has a bad shape " + v["shape"].dump());
      e.shape.push_back(d.get<int64_t>());
    }
    if (!v["data_offsets"][0].is_number_unsigned() || !v["data_offsets"][1].is_number_unsigned())
      corrupt(path, where + " has bad data_offsets " + v["data_offsets"].dump());
    const uint64_t begin = v["data_offsets"][0].get<uint64_t>();
    const uint64_t end = v["data_offsets"][1].get<uint64_t>();
    const uint64_t expected = static_cast<uint64_t>(e.numel()) * dtype_size(e.dtype);
    if (end < begin || end - begin != expected)
      corrupt(path, where + " occupies " + std::to_string(end - begin) +
                        " bytes but its shape and dtype need " + std::to_string(expected));
    if (end > data_size)
      corrupt(path, where + " ends at byte " + std::to_string(end) + " of a data section of " +
                        std::to_string(data_size) + " bytes (truncated file)");
    e.bytes = bytes.subspan(data_begin + begin, end - begin);
    ranges.emplace_back(begin, end);
    entries_.emplace(e.name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) corrupt(path, "two tensors' byte ranges overlap");
}

const SafetensorsEntry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end())
    throw Error(ErrorKind::kCorruptData,
                "safetensors file '" + path() + "' has no tensor '" + name + "'");
  return it->second;
}

void SafetensorsWriter::add(const std::string& name, DType dtype,
                            const std::vector<int64_t>& shape, std::span<const std::byte> bytes) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  SHARDLM_REQUIRE(bytes.size() == static_cast<size_t>(n) * dtype_size(dtype),
                  ErrorKind::kInternal,
                  "safetensors tensor '" + name + "': " + std::to_string(bytes.size()) +
                      " bytes for " + std::to_string(n) + " elements of " + dtype_name(dtype));
  for (const Pending& p : tensors_)
    SHARDLM_REQUIRE(p.name != name, ErrorKind::kInternal,
                    "safetensors tensor '" + name + "' added twice");
  tensors_.push_back({name, dtype, shape, bytes});
}

SafetensorsWriter::Checksums SafetensorsWriter::write(const std::string& path) const {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const Pending& p : tensors_) {
    header[p.name] = {{"dtype", safetensors_dtype_name(p.dtype)},
                      {"shape", p.shape},
                      {"data_offsets", {offset, offset + p.bytes.size()}}};
    offset += p.bytes.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  const uint64_t len = text.size();

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot create '" + path + "': " + std::strerror(errno));
  Checksums sums;
  sums.tensors.reserve(tensors_.size());
  Xxh64 file_hash;
  WritebackPacer pacer(fd, path);
  try {
    unsigned char len_bytes[8];
    std::memcpy(len_bytes, &len, 8);
    write_all(fd, len_bytes, 8, path);
    file_hash.update(len_bytes, 8);
    write_all(fd, text.data(), text.size(), path);
    file_hash.update(text.data(), text.size());
    uint64_t end = 8 + len;
    for (const Pending& p : tensors_) {
      // Slices of 8 MiB: each is hashed (file and tensor hash, piece by piece while a piece is
      // in the L2 cache), then written from the still warm cache, then its writeback started.
      constexpr size_t kSlice = size_t{8} << 20;
      constexpr size_t kPiece = size_t{256} << 10;
      Xxh64 tensor_hash;
      for (size_t off = 0; off < p.bytes.size(); off += kSlice) {
        const std::byte* slice = p.bytes.data() + off;
        const size_t n = std::min(kSlice, p.bytes.size() - off);
        for (size_t h = 0; h < n; h += kPiece) {
          const size_t m = std::min(kPiece, n - h);
          tensor_hash.update(slice + h, m);
          file_hash.update(slice + h, m);
        }
        write_all(fd, slice, n, path);
        end += n;
        pacer.written(end);
      }
      sums.tensors.push_back(tensor_hash.digest());
    }
    if (::fsync(fd) != 0)
      throw Error(ErrorKind::kIo, "cannot fsync '" + path + "': " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0)
    throw Error(ErrorKind::kIo, "cannot close '" + path + "': " + std::strerror(errno));
  sums.file = file_hash.digest();
  return sums;
}

}  // namespace shardlm::ckpt
