// safetensors: round trip of every dtype; a byte-exact file against a hand-built one; every kind
// of malformed file is refused with an error naming the file (and tensor).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>

#include "ckpt_test_util.h"
#include "shardlm/base/error.h"
#include "shardlm/ckpt/checksum.h"
#include "shardlm/ckpt/safetensors.h"

namespace shardlm::ckpt {
namespace {

using testing::TempDir;

std::span<const std::byte> as_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(float)};
}

// Writes a safetensors file by hand (the format's definition) for the reader to parse.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripAndChecksum) {
  TempDir dir;
  const std::string path = dir.str() + "/t.safetensors";
  std::vector<float> a(12), b(5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.25f * static_cast<float>(i) - 1.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i * i) + 0.5f;
  std::vector<uint16_t> c = {1, 2, 65535};
  SafetensorsWriter w;
  w.add("layer.a", DType::kF32, {3, 4}, as_bytes(a));
  w.add("b", DType::kF32, {5}, as_bytes(b));
  w.add("c", DType::kBF16, {3}, {reinterpret_cast<const std::byte*>(c.data()), 6});
  w.set_metadata("format", "pt");
  const SafetensorsWriter::Checksums sums = w.write(path);
  const std::string bytes = testing::slurp(path);
  EXPECT_EQ(sums.file, xxh64(bytes.data(), bytes.size()));
  ASSERT_EQ(sums.tensors.size(), 3u);
  EXPECT_EQ(sums.tensors[0], xxh64(a.data(), 48));
  EXPECT_EQ(sums.tensors[1], xxh64(b.data(), 20));
  EXPECT_EQ(sums.tensors[2], xxh64(c.data(), 6));
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);  // data section aligned

  SafetensorsReader r(path);
  ASSERT_EQ(r.entries().size(), 3u);
  const SafetensorsEntry& ea = r.entry("layer.a");
  EXPECT_EQ(ea.dtype, DType::kF32);
  EXPECT_EQ(ea.shape, (std::vector<int64_t>{3, 4}));
  ASSERT_EQ(ea.bytes.size(), a.size() * 4);
  EXPECT_EQ(std::memcmp(ea.bytes.data(), a.data(), ea.bytes.size()), 0);
  EXPECT_EQ(std::memcmp(r.entry("b").bytes.data(), b.data(), 20), 0);
  EXPECT_EQ(r.entry("c").dtype, DType::kBF16);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_NE(error_of([&] { r.entry("nope"); }).find("no tensor 'nope'"), std::string::npos);
}

// The writer works in 8 MiB slices: tensors of 0 bytes, a few bytes, exactly a slice, a slice and
// a bit, and several slices (in add() order, not sorted) each get XXH64 of their own bytes, and the
// file hash is XXH64 of the file as read back.
TEST(Safetensors, ChecksumsOfTensorsSpanningSlices) {
  TempDir dir;
  const std::string path = dir.str() + "/big.safetensors";
  constexpr size_t kMiB = size_t{1} << 20;
  const std::vector<std::pair<std::string, size_t>> sizes = {
      {"z.empty", 0}, {"y.three", 3}, {"x.slice", 8 * kMiB}, {"w.slice_plus_5", 8 * kMiB + 5},
      {"v.twenty", 20 * kMiB + 12345}, {"u.seven", 7}};
  std::vector<std::vector<std::byte>> data;
  uint64_t state = 0x9e3779b97f4a7c15ull;
  SafetensorsWriter w;
  for (const auto& [name, n] : sizes) {
    std::vector<std::byte> bytes(n);
    for (std::byte& b : bytes) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      b = static_cast<std::byte>(state >> 56);
    }
    data.push_back(std::move(bytes));
    w.add(name, DType::kF8E4M3, {static_cast<int64_t>(n)}, data.back());
  }
  const SafetensorsWriter::Checksums sums = w.write(path);
  ASSERT_EQ(sums.tensors.size(), sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i)
    EXPECT_EQ(sums.tensors[i], xxh64(data[i].data(), data[i].size())) << sizes[i].first;
  EXPECT_EQ(sums.tensors[0], xxh64(nullptr, 0));
  const std::string bytes = testing::slurp(path);
  EXPECT_EQ(sums.file, xxh64(bytes.data(), bytes.size()));

  SafetensorsReader r(path);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const SafetensorsEntry& e = r.entry(sizes[i].first);
    ASSERT_EQ(e.bytes.size(), data[i].size()) << sizes[i].first;
    EXPECT_TRUE(std::equal(e.bytes.begin(), e.bytes.end(), data[i].begin())) << sizes[i].first;
  }
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  TempDir dir;
  const std::string path = dir.str() + "/h.safetensors";
  const float vals[3] = {1.5f, -2.0f, 3.25f};
  std::string data(reinterpret_cast<const char*>(vals), 12);
  write_raw(path,
            R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[1,3],"data_offsets":[0,12]}})",
            data);
  SafetensorsReader r(path);
  const SafetensorsEntry& e = r.entry("x");
  EXPECT_EQ(e.shape, (std::vector<int64_t>{1, 3}));
  float got[3];
  std::memcpy(got, e.bytes.data(), 12);
  EXPECT_EQ(got[2], 3.25f);
}

TEST(Safetensors, MalformedFilesAreRefusedNamingFileAndTensor) {
  TempDir dir;
  const std::string p = dir.str() + "/bad.safetensors";
  const std::string twelve(12, '\1');
  auto expect_corrupt = [&](const std::string& needle) {
    std::string msg;
    try {
      SafetensorsReader r(p);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorruptData) << e.what();
      msg = e.what();
    }
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  {  // shorter than the size field
    std::ofstream(p, std::ios::binary) << "abc";
    expect_corrupt("truncated");
  }
  write_raw(p, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", "");
  expect_corrupt("truncated");  // data missing
  write_raw(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", twelve);
  expect_corrupt("tensor 'x'");  // shape needs 16 bytes
  write_raw(p, R"({"x":{"dtype":"F32","shape":[3]}})", twelve);
  expect_corrupt("tensor 'x'");
  write_raw(p, R"({"x":{"dtype":"F32","shape":[3],)", twelve);
  expect_corrupt("not a JSON object");
  write_raw(p, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            twelve);
  expect_corrupt("overlap");
  {  // header length beyond the file
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = 1000;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  expect_corrupt("exceeds the file size");
  write_raw(p, R"({"x":{"dtype":"Q4","shape":[3],"data_offsets":[0,12]}})", twelve);
  const std::string msg = error_of([&] { SafetensorsReader r(p); });
  EXPECT_NE(msg.find("tensor 'x'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Q4"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { SafetensorsReader r(dir.str() + "/missing.safetensors"); }).find("cannot open"),
            std::string::npos);
}

}  // namespace
}  // namespace shardlm::ckpt
