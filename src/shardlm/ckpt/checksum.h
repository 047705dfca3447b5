// XXH64 (Yann Collet's xxHash, 64-bit variant), implemented from its public specification: the
// checksum of every checkpoint file and every saved shard. Fast (four independent lanes over
// 32-byte stripes), so hashing never dominates a save; printed as 16 lower-case hex digits.
//
// Thread contract: Xxh64 is a value type used by one thread; xxh64() is pure.
//
//   uint64_t h = xxh64(bytes.data(), bytes.size());
//   Xxh64 s;  s.update(a, na);  s.update(b, nb);  s.digest() == xxh64(a ++ b)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shardlm::ckpt {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);
std::string checksum_hex(uint64_t h);  // 16 hex digits

}  // namespace shardlm::ckpt
