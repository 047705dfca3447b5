#include "shardlm/data/indexed_dataset.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/data/indexed_dataset_writer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(IndexedDataset, ReadsMegatronOutput) {
  const IndexedDataset ds =
      IndexedDataset::open(testing::shared_data("megatron/moby_dick_text_document"));
  EXPECT_EQ(ds.num_sequences(), 138);
  EXPECT_EQ(ds.num_documents(), 138);
  EXPECT_EQ(ds.num_tokens(), 293603);
  EXPECT_EQ(ds.dtype(), TokenDType::kUInt16);
  const std::vector<int32_t> lengths = ds.sequence_lengths();
  EXPECT_EQ(std::vector<int32_t>(lengths.begin(), lengths.begin() + 5),
            (std::vector<int32_t>{597, 5536, 2863, 1926, 7905}));
  EXPECT_EQ(ds.sequence(0).back(), 50256);
}

TEST(IndexedDataset, RoundTripsEveryIntegerDtype) {
  ScratchDir dir("dtypes");
  std::mt19937 rng(3);
  for (TokenDType dtype : {TokenDType::kUInt8, TokenDType::kInt8, TokenDType::kInt16,
                           TokenDType::kUInt16, TokenDType::kInt32, TokenDType::kInt64}) {
    const std::string prefix = dir.file("ds" + std::to_string(static_cast<int>(dtype)));
    std::vector<std::vector<int32_t>> docs;
    {
      IndexedDatasetWriter writer(prefix, dtype);
      for (int d = 0; d < 20; ++d) {
        std::vector<int32_t> doc(rng() % 50);
        for (auto& t : doc) t = static_cast<int32_t>(rng() % 100);
        const std::vector<int32_t> lengths = {static_cast<int32_t>(doc.size())};
        writer.add_document(doc, lengths);
        docs.push_back(doc);
      }
      writer.finish();
    }
    const IndexedDataset ds = IndexedDataset::open(prefix);
    ASSERT_EQ(ds.num_sequences(), 20);
    for (int d = 0; d < 20; ++d) EXPECT_EQ(ds.sequence(d), docs[d]);
  }
}

TEST(IndexedDataset, UnfinishedWriterLeavesNothing) {
  ScratchDir dir("unfinished");
  {
    IndexedDatasetWriter writer(dir.file("x"), TokenDType::kUInt16);
    const std::vector<int32_t> doc = {1, 2, 3};
    const std::vector<int32_t> lengths = {3};
    writer.add_document(doc, lengths);
  }  // destroyed without finish(), e.g. by an exception
  EXPECT_TRUE(std::filesystem::is_empty(dir.file("")));
}

TEST(IndexedDataset, TokenTooLargeForDtypeIsRejected) {
  ScratchDir dir("narrow");
  IndexedDatasetWriter writer(dir.file("x"), TokenDType::kUInt16);
  const std::vector<int32_t> doc = {70000};
  const std::vector<int32_t> lengths = {1};
  EXPECT_THROW(writer.add_document(doc, lengths), Error);
}

// Each corruption of a valid pair must give kCorruptData naming the damaged file.
class CorruptIndexedDataset : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string ref = testing::shared_data("megatron/moby_dick_text_document");
    idx_ = read_bytes(ref + ".idx");
    bin_ = read_bytes(ref + ".bin");
  }
  void expect_corrupt(const std::string& idx, const std::string& bin, const std::string& file,
                      const std::string& message) {
    write_bytes(dir_.file("c.idx"), idx);
    write_bytes(dir_.file("c.bin"), bin);
    try {
      IndexedDataset::open(dir_.file("c"));
      ADD_FAILURE() << "no error; expected " << message;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorruptData) << e.what();
      EXPECT_NE(std::string(e.what()).find(dir_.file(file)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
  template <typename T>
  std::string patched(size_t offset, T value) {
    std::string copy = idx_;
    std::memcpy(copy.data() + offset, &value, sizeof(T));
    return copy;
  }

  ScratchDir dir_{"corrupt"};
  std::string idx_, bin_;
};

TEST_F(CorruptIndexedDataset, EveryKindIsRejected) {
  expect_corrupt(idx_.substr(0, 20), bin_, "c.idx", "truncated: the header needs 34 bytes");
  expect_corrupt(idx_.substr(0, idx_.size() - 1), bin_, "c.idx", "truncated");
  expect_corrupt(idx_ + "x", bin_, "c.idx", "trailing bytes");
  expect_corrupt("MMIDIDY" + idx_.substr(7), bin_, "c.idx", "bad magic");
  expect_corrupt(patched<uint64_t>(9, 2), bin_, "c.idx", "unsupported version 2");
  expect_corrupt(patched<uint8_t>(17, 42), bin_, "c.idx", "unknown dtype code 42");
  expect_corrupt(patched<uint8_t>(17, 7), bin_, "c.idx", "cannot hold token ids");
  expect_corrupt(patched<uint64_t>(18, 1ull << 40), bin_, "c.idx", "exceed");
  expect_corrupt(patched<int32_t>(34, -1), bin_, "c.idx", "negative length");
  expect_corrupt(patched<int32_t>(34, 598), bin_, "c.idx", "starts at byte");
  const size_t doc_index = 34 + 12 * 138;
  expect_corrupt(patched<int64_t>(doc_index + 8 * 5, 3), bin_, "c.idx", "out of order");
  expect_corrupt(idx_, bin_.substr(0, bin_.size() - 2), "c.bin", "truncated");
  expect_corrupt(idx_, bin_ + "xx", "c.bin", "belongs to another .idx");
}

TEST_F(CorruptIndexedDataset, MissingFileIsAnIoError) {
  write_bytes(dir_.file("only.idx"), idx_);
  try {
    IndexedDataset::open(dir_.file("only"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("only.bin"), std::string::npos);
  }
}

}  // namespace
}  // namespace shardlm::data
