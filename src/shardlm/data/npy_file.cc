#include "shardlm/data/npy_file.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "shardlm/base/error.h"
#include "shardlm/data/mapped_file.h"

namespace shardlm::data {
namespace {

constexpr char kNpyMagic[] = "\x93NUMPY";

const char* descr_of(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kInt32:
      return "<i4";
    case NpyDType::kUInt32:
      return "<u4";
    case NpyDType::kInt64:
      return "<i8";
  }
  return "";
}

std::string header_for(const std::vector<int64_t>& shape, NpyDType dtype) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = std::string("{'descr': '") + descr_of(dtype) +
                       "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Pad with spaces so that magic + version + length + header (+ '\n') is a multiple of 64.
  const size_t unpadded = 6 + 2 + 2 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  return header;
}

template <typename Stored, typename Value>
void write_values(std::ofstream& out, std::span<const Value> values) {
  std::vector<Stored> buffer(values.begin(), values.end());
  out.write(reinterpret_cast<const char*>(buffer.data()),
            static_cast<std::streamsize>(buffer.size() * sizeof(Stored)));
}

template <typename Value>
void write_npy_impl(const std::string& path, std::span<const Value> values,
                    const std::vector<int64_t>& shape, NpyDType dtype) {
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(ErrorKind::kIo, "cannot create '" + temp + "'");
    const std::string header = header_for(shape, dtype);
    out.write(kNpyMagic, 6);
    const char version[2] = {1, 0};
    out.write(version, 2);
    const auto length = static_cast<uint16_t>(header.size());
    out.write(reinterpret_cast<const char*>(&length), 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    switch (dtype) {
      case NpyDType::kInt32:
        write_values<int32_t>(out, values);
        break;
      case NpyDType::kUInt32:
        write_values<uint32_t>(out, values);
        break;
      case NpyDType::kInt64:
        write_values<int64_t>(out, values);
        break;
    }
    if (!out) throw Error(ErrorKind::kIo, "cannot write '" + temp + "'");
  }
  std::filesystem::rename(temp, path);
}

}  // namespace

void write_npy(const std::string& path, std::span<const int64_t> values,
               const std::vector<int64_t>& shape, NpyDType dtype) {
  write_npy_impl(path, values, shape, dtype);
}

void write_npy(const std::string& path, std::span<const int32_t> values,
               const std::vector<int64_t>& shape) {
  write_npy_impl(path, values, shape, NpyDType::kInt32);
}

NpyArray read_npy(const std::string& path) {
  const MappedFile file(path);
  const auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kCorruptData, path + ": " + what + "; delete the file to rebuild it");
  };
  const auto* bytes = reinterpret_cast<const char*>(file.bytes().data());
  if (file.size() < 10 || std::memcmp(bytes, kNpyMagic, 6) != 0 || bytes[6] != 1) {
    throw bad("not a version 1 .npy file");
  }
  uint16_t header_length;
  std::memcpy(&header_length, bytes + 8, 2);
  if (10u + header_length > file.size()) throw bad("truncated header");
  const std::string header(bytes + 10, header_length);
  std::smatch m;
  static const std::regex kHeader(
      R"(\{'descr': '(<i4|<u4|<i8)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \})");
  if (!std::regex_search(header, m, kHeader)) throw bad("unsupported header " + header);
  NpyArray array;
  int64_t count = 1;
  const std::string dims = m[2].str();
  for (size_t pos = 0; pos < dims.size();) {
    const size_t comma = dims.find(',', pos);
    const std::string dim = dims.substr(pos, comma == std::string::npos ? comma : comma - pos);
    if (dim.find_first_not_of(' ') != std::string::npos) {
      array.shape.push_back(std::stoll(dim));
      count *= array.shape.back();
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  const std::string descr = m[1].str();
  const size_t item = descr == "<i8" ? 8 : 4;
  const char* data = bytes + 10 + header_length;
  if (file.size() != 10 + header_length + item * static_cast<size_t>(count)) {
    throw bad("size does not match shape");
  }
  array.values.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    if (descr == "<i4") {
      int32_t v;
      std::memcpy(&v, data + 4 * i, 4);
      array.values[i] = v;
    } else if (descr == "<u4") {
      uint32_t v;
      std::memcpy(&v, data + 4 * i, 4);
      array.values[i] = v;
    } else {
      std::memcpy(&array.values[i], data + 8 * i, 8);
    }
  }
  return array;
}

}  // namespace shardlm::data
