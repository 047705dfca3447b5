// Constants of Megatron's indexed dataset format (prose: docs/formats/indexed_dataset.md).
//
// PREFIX.idx (little-endian):
//   magic      9 bytes  "MMIDIDX\0\0"
//   version    u64      1
//   dtype      u8       token dtype code (TokenDType below)
//   N          u64      number of sequences
//   D          u64      number of document-index entries (documents + 1)
//   lengths    i32[N]   tokens per sequence
//   pointers   i64[N]   byte offset of each sequence in PREFIX.bin
//   doc_index  i64[D]   sequence index where each document starts; first 0, last N
// PREFIX.bin: the sequences' tokens back to back, in the dtype of the header.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace shardlm::data {

inline constexpr char kIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t kIndexVersion = 1;
inline constexpr size_t kIndexHeaderBytes = 9 + 8 + 1 + 8 + 8;  // 34

// Megatron's DType codes (megatron/core/datasets/indexed_dataset.py).
enum class TokenDType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// Bytes per element, or nullopt for an unknown code.
std::optional<int> token_dtype_size(uint8_t code);
std::string_view token_dtype_name(TokenDType dtype);
// Megatron's DType.optimal_dtype: uint16 when the vocabulary has fewer than 65,500 entries,
// else int32.
TokenDType optimal_token_dtype(int64_t vocab_size);

}  // namespace shardlm::data
