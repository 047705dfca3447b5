// Minimal .npy (NumPy format 1.0) reader/writer for the integer index arrays that datasets
// cache, so the caches can be inspected with numpy.load like Megatron's.
// Supported: little-endian int32, uint32, int64; C order; 1-D or 2-D.
//
//   write_npy("x.npy", std::span<const int64_t>(v), {n / 2, 2}, NpyDType::kInt32);
//   std::vector<int64_t> back = read_npy("x.npy").values;
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace shardlm::data {

enum class NpyDType { kInt32, kUInt32, kInt64 };

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<int64_t> values;  // widened to int64
};

// Writes values (stored as `dtype`) atomically (temporary name, then rename).
void write_npy(const std::string& path, std::span<const int64_t> values,
               const std::vector<int64_t>& shape, NpyDType dtype);
void write_npy(const std::string& path, std::span<const int32_t> values,
               const std::vector<int64_t>& shape);
// Throws Error(kCorruptData) naming the file for anything it does not understand.
NpyArray read_npy(const std::string& path);

}  // namespace shardlm::data
