// XXH64 against the published test vectors; streaming equals one-shot for every split.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "shardlm/ckpt/checksum.h"

namespace shardlm::ckpt {
namespace {

uint64_t h(const std::string& s, uint64_t seed = 0) { return xxh64(s.data(), s.size(), seed); }

TEST(Xxh64, PublishedVectors) {
  EXPECT_EQ(h(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(h("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(h("abc"), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(h("Hello, World!"), 0xC49AACF8080FE47FULL);
  EXPECT_EQ(h("Hello, World!", 42), 0xC2E0FE28B2512846ULL);
  // 39 bytes: one 32-byte stripe plus an 8-, 4- and single-byte tail.
  EXPECT_EQ(h("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ULL);
  EXPECT_EQ(checksum_hex(0x44BC2CF5AD770999ULL), "44bc2cf5ad770999");
}

TEST(Xxh64, StreamingEqualsOneShot) {
  std::vector<unsigned char> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 131 + 7);
  for (size_t len : {0, 5, 31, 32, 33, 64, 95, 300, 1000}) {
    const uint64_t whole = xxh64(data.data(), len);
    for (size_t step : {1, 3, 7, 16, 31, 32, 33, 100}) {
      Xxh64 s;
      for (size_t off = 0; off < len; off += step) s.update(data.data() + off, std::min(step, len - off));
      EXPECT_EQ(s.digest(), whole) << "len " << len << " step " << step;
    }
  }
  // Different data, different hash (the checksum can fail).
  std::vector<unsigned char> other = data;
  other[500] ^= 1;
  EXPECT_NE(xxh64(other.data(), other.size()), xxh64(data.data(), data.size()));
}

}  // namespace
}  // namespace shardlm::ckpt
