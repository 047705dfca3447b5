#include "shardlm/data/preprocess.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/data/indexed_dataset.h"
#include "shardlm/data/tokenizer/gpt2_bpe_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;
using testing::shared_data;

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const Tokenizer& gpt2() {
  static const auto tokenizer =
      Gpt2BpeTokenizer::from_files(testing::gpt2_vocab(), testing::gpt2_merges());
  return *tokenizer;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(Preprocess, MobyDickIsByteIdenticalToMegatron) {
  ScratchDir dir("moby");
  PreprocessOptions options;
  options.input = shared_data("corpus/moby_dick.jsonl");
  options.output_prefix = dir.file("moby_dick");
  options.append_eod = true;
  options.workers = 2;
  options.batch_bytes = 100000;  // several batches
  const PreprocessReport report = preprocess_jsonl(options, gpt2());
  EXPECT_EQ(report.documents, 138);
  EXPECT_EQ(report.tokens, 293603);
  ASSERT_EQ(report.output_prefixes.size(), 1u);
  const std::string prefix = dir.file("moby_dick_text_document");
  EXPECT_EQ(report.output_prefixes[0], prefix);
  const std::string reference = shared_data("megatron/moby_dick_text_document");
  EXPECT_TRUE(file_bytes(prefix + ".bin") == file_bytes(reference + ".bin"));
  EXPECT_TRUE(file_bytes(prefix + ".idx") == file_bytes(reference + ".idx"));
}

TEST(Preprocess, ListValuesBecomeSequencesAndEmptyTextsEmptyDocuments) {
  ScratchDir dir("lists");
  write_file(dir.file("in.jsonl"),
             "{\"text\": [\"Hello world\", \"\", \"Call me Ishmael.\"]}\n{\"text\": \"\"}\n"
             "{\"text\": \"Hello\"}\n");
  PreprocessOptions options;
  options.input = dir.file("in.jsonl");
  options.output_prefix = dir.file("out");
  options.append_eod = true;
  preprocess_jsonl(options, gpt2());
  const IndexedDataset ds = IndexedDataset::open(dir.file("out_text_document"));
  ASSERT_EQ(ds.num_sequences(), 3);
  EXPECT_EQ(ds.num_documents(), 3);
  EXPECT_EQ(ds.sequence(0), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(ds.sequence(1), (std::vector<int32_t>{14134, 502, 1148, 21720, 417, 13, 50256}));
  EXPECT_EQ(ds.sequence(2), (std::vector<int32_t>{15496, 50256}));
  EXPECT_EQ(ds.document_index(1), 2);
  EXPECT_EQ(ds.document_index(2), 2);  // the empty document has no sequence
  EXPECT_EQ(ds.document_index(3), 3);
}

TEST(Preprocess, BadLinesNameFileAndLine) {
  ScratchDir dir("bad");
  const std::string good = "{\"text\": \"Hello\"}\n";
  const struct {
    std::string line;
    std::string expected;
  } cases[] = {
      {"{\"text\": \"unterminated}\n", "invalid JSON"},
      {"{\"body\": \"Hello\"}\n", "no key 'text'"},
      {"{\"text\": \"caf\xC3\"}\n", "invalid JSON or UTF-8"},
      {"{\"text\": 5}\n", "neither a string"},
  };
  for (const auto& c : cases) {
    write_file(dir.file("in.jsonl"), good + c.line + good);
    PreprocessOptions options;
    options.input = dir.file("in.jsonl");
    options.output_prefix = dir.file("out");
    try {
      preprocess_jsonl(options, gpt2());
      ADD_FAILURE() << "no error for " << c.line;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorruptData);
      EXPECT_NE(std::string(e.what()).find(options.input + ":2:"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    }
    // No output, not even a half-written one.
    EXPECT_FALSE(std::filesystem::exists(dir.file("out_text_document.bin")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("out_text_document.idx")));
    EXPECT_TRUE(std::filesystem::is_empty(dir.file("")) ||
                std::distance(std::filesystem::directory_iterator(dir.file("")),
                              std::filesystem::directory_iterator{}) == 1);

    options.skip_invalid = true;
    const PreprocessReport report = preprocess_jsonl(options, gpt2());
    EXPECT_EQ(report.skipped_lines, 1);
    EXPECT_EQ(report.documents, 2);
    std::filesystem::remove(dir.file("out_text_document.bin"));
    std::filesystem::remove(dir.file("out_text_document.idx"));
  }
}

TEST(Preprocess, MergeConcatenatesDatasets) {
  ScratchDir dir("merge");
  write_file(dir.file("a.jsonl"), "{\"text\": \"Hello world\"}\n{\"text\": \"\"}\n");
  write_file(dir.file("b.jsonl"), "{\"text\": \"Call me Ishmael.\"}\n");
  for (const std::string name : {"a", "b"}) {
    PreprocessOptions options;
    options.input = dir.file(name + ".jsonl");
    options.output_prefix = dir.file(name);
    options.append_eod = true;
    preprocess_jsonl(options, gpt2());
  }
  merge_indexed_datasets({dir.file("a_text_document"), dir.file("b_text_document")},
                         dir.file("ab"));
  const IndexedDataset ab = IndexedDataset::open(dir.file("ab"));
  EXPECT_EQ(ab.num_sequences(), 2);
  EXPECT_EQ(ab.num_documents(), 3);
  EXPECT_EQ(ab.sequence(1).size(), 7u);
  EXPECT_EQ(ab.document_index(2), 1);
  EXPECT_EQ(ab.document_index(3), 2);
}

}  // namespace
}  // namespace shardlm::data
