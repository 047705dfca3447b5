// `preprocess --split-sentences`: one sequence per sentence, documents end after their last
// sentence, PREFIX_KEY_sentence output; GPT datasets still read such corpora.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <fstream>

#include "shardlm/cli/commands.h"

#include "shardlm/data/gpt_dataset.h"
#include "shardlm/data/indexed_dataset.h"
#include "shardlm/data/preprocess.h"
#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

TEST(PreprocessSentences, OneSequencePerSentenceAndDocumentBoundaries) {
  testing::ScratchDir dir("sentences");
  std::ofstream(dir.file("in.jsonl"))
      << "{\"text\": \"Call me Ishmael. Some years ago I went to sea.\\n\\nIt was cold\"}\n"
      << "{\"text\": \"  \"}\n"
      << "{\"text\": [\"Already split.\", \"\", \"Second!\"]}\n"
      << "{\"text\": \"One sentence only.\"}\n";
  const auto tok =
      WordPieceTokenizer::from_file(testing::golden_data("bert/vocab-lowercase-8k.txt"), true);
  PreprocessOptions o;
  o.input = dir.file("in.jsonl");
  o.output_prefix = dir.file("out");
  o.split_sentences = true;
  o.append_eod = true;
  const PreprocessReport r = preprocess_jsonl(o, *tok);
  ASSERT_EQ(r.output_prefixes.size(), 1u);
  EXPECT_EQ(r.output_prefixes[0], dir.file("out_text_sentence"));
  const auto corpus =
      std::make_shared<const IndexedDataset>(IndexedDataset::open(dir.file("out_text_sentence")));
  const IndexedDataset& ds = *corpus;
  EXPECT_EQ(ds.num_documents(), 4);
  ASSERT_EQ(ds.num_sequences(), 6);  // 3 + 0 + 2 (list items, the empty one skipped) + 1
  EXPECT_EQ(ds.document_index(1), 3);
  EXPECT_EQ(ds.document_index(2), 3);  // the blank document has no sequence
  EXPECT_EQ(ds.document_index(3), 5);
  EXPECT_EQ(ds.document_index(4), 6);
  EXPECT_EQ(tok->decode(ds.sequence(0)), "call me ishmael.");
  EXPECT_EQ(tok->decode(ds.sequence(1)), "some years ago i went to sea.");
  // --append-eod puts [EOS] at the end of each document's last sentence only.
  EXPECT_EQ(ds.sequence(2).back(), *tok->eod_id());
  EXPECT_NE(ds.sequence(1).back(), *tok->eod_id());
  EXPECT_EQ(tok->decode(ds.sequence(4)), "second! [EOS]");

  // GPT treats each sentence as a document and still samples windows across them.
  GptDatasetConfig gc{.seq_length = 4, .cache_dir = std::nullopt};
  const GptDataset gpt(corpus, {0, corpus->num_sequences()}, 5, gc, "train");
  std::vector<int32_t> tokens(5);
  std::vector<float> mask(4);
  for (int64_t i = 0; i < gpt.size(); ++i) gpt.get(i, tokens, mask);
  EXPECT_GE(gpt.size(), 5);
}

TEST(PreprocessSentences, CommandLineFlag) {
  testing::ScratchDir dir("sentences_cli");
  std::ofstream(dir.file("in.jsonl")) << "{\"text\": \"One here. Two there.\"}\n";
  CLI::App app("shardlm");
  cli::register_preprocess(app);
  std::vector<std::string> args = {"preprocess", "--input", dir.file("in.jsonl"),
                                   "--output-prefix", dir.file("o"), "--tokenizer-type",
                                   "BertWordPieceLowerCase", "--vocab-file",
                                   testing::golden_data("bert/vocab-lowercase-8k.txt"),
                                   "--split-sentences", "--workers", "1"};
  std::reverse(args.begin(), args.end());
  app.parse(args);
  const IndexedDataset ds = IndexedDataset::open(dir.file("o_text_sentence"));
  EXPECT_EQ(ds.num_sequences(), 2);
  EXPECT_EQ(ds.num_documents(), 1);
}

}  // namespace
}  // namespace shardlm::data
