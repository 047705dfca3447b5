// BertDataset over Moby Dick preprocessed with --split-sentences and the 8k WordPiece vocab:
// property tests of Megatron's BERT sample construction, errors, and the mock dataset.
#include "shardlm/data/bert_dataset.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/data/bert_dataset_builder.h"
#include "shardlm/data/mock_bert_dataset.h"
#include "shardlm/data/preprocess.h"
#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;

std::shared_ptr<const WordPieceTokenizer> tokenizer() {
  static const std::shared_ptr<const WordPieceTokenizer> tok =
      WordPieceTokenizer::from_file(testing::golden_data("bert/vocab-lowercase-8k.txt"), true);
  return tok;
}

// Moby Dick at sentence level (and at document level), written once per test binary run.
class MobyCorpus {
 public:
  MobyCorpus() : dir_("bert_moby") {
    for (bool split : {true, false}) {
      PreprocessOptions o;
      o.input = testing::shared_data("corpus/moby_dick.jsonl");
      o.output_prefix = dir_.file("moby");
      o.split_sentences = split;
      o.workers = 2;
      preprocess_jsonl(o, *tokenizer());
    }
    sentences_ = std::make_shared<const IndexedDataset>(
        IndexedDataset::open(dir_.file("moby_text_sentence")));
    documents_ = std::make_shared<const IndexedDataset>(
        IndexedDataset::open(dir_.file("moby_text_document")));
  }
  std::shared_ptr<const IndexedDataset> sentences() const { return sentences_; }
  std::shared_ptr<const IndexedDataset> documents() const { return documents_; }
  std::string prefix() const { return dir_.file("moby_text_sentence"); }

 private:
  ScratchDir dir_;
  std::shared_ptr<const IndexedDataset> sentences_, documents_;
};

const MobyCorpus& moby() {
  static const MobyCorpus corpus;
  return corpus;
}

BertDatasetConfig config(int64_t seq_length) {
  BertDatasetConfig c;
  c.seq_length = seq_length;
  c.vocab = tokenizer();
  return c;
}

struct Sample {
  std::vector<int32_t> tokens, types, labels;
  std::vector<float> loss;
  BertSampleView view;
  explicit Sample(int64_t s) : tokens(s), types(s), labels(s), loss(s) {
    view = {tokens, types, labels, loss};
  }
};

TEST(BertDataset, SamplesHaveMegatronsStructure) {
  const int64_t S = 128;
  const BertDataset ds(moby().sentences(), {0, moby().sentences()->num_documents()}, 3000,
                       config(S), "train");
  ASSERT_GE(ds.size(), 3000);
  const auto& vocab = *tokenizer();
  Sample s(S);
  int64_t masked = 0, maskable = 0, as_mask = 0, kept = 0, swapped = 0, truncated_room = 0;
  for (int64_t i = 0; i < 3000; ++i) {
    ds.get(i, s.view);
    const int32_t n = s.view.length;
    ASSERT_GT(n, 3);
    ASSERT_LE(n, S);
    EXPECT_EQ(s.tokens[0], vocab.cls_id());
    std::vector<int32_t> seps;
    for (int32_t k = 0; k < n; ++k) {
      if (s.tokens[k] == vocab.sep_id() && s.labels[k] == -1) seps.push_back(k);
    }
    ASSERT_EQ(seps.size(), 2u) << "sample " << i;
    EXPECT_EQ(seps[1], n - 1);
    EXPECT_GT(seps[0], 1);           // A is not empty
    EXPECT_GT(seps[1], seps[0] + 1);  // nor is B
    for (int32_t k = 0; k < S; ++k) {
      const int32_t expected_type = (k > seps[0] && k < n) ? 1 : 0;
      EXPECT_EQ(s.types[k], expected_type);
      if (k >= n) {
        EXPECT_EQ(s.tokens[k], vocab.pad_id());
        EXPECT_EQ(s.labels[k], -1);
      }
      EXPECT_EQ(s.loss[k] == 1.0f, s.labels[k] != -1);
      EXPECT_TRUE(s.loss[k] == 0.0f || s.loss[k] == 1.0f);
      if (s.labels[k] != -1) {
        ++masked;
        EXPECT_NE(s.labels[k], vocab.cls_id());
        EXPECT_NE(s.labels[k], vocab.sep_id());
        as_mask += s.tokens[k] == vocab.mask_id();
        kept += s.tokens[k] == s.labels[k];
      }
    }
    maskable += n - 3;
    swapped += s.view.sentence_order;
    EXPECT_TRUE(s.view.sentence_order == 0 || s.view.sentence_order == 1);
    // Whole words: a "##" piece is masked exactly when the piece before it is.
    for (int32_t k = 2; k < n; ++k) {
      const int32_t orig = s.labels[k] != -1 ? s.labels[k] : s.tokens[k];
      const int32_t prev = s.labels[k - 1] != -1 ? s.labels[k - 1] : s.tokens[k - 1];
      if (vocab.is_continuation(orig) && prev != vocab.cls_id() && prev != vocab.sep_id()) {
        EXPECT_EQ(s.labels[k] != -1, s.labels[k - 1] != -1) << "sample " << i << " pos " << k;
      }
    }
    truncated_room += S - n;
  }
  const double fraction = static_cast<double>(masked) / maskable;
  EXPECT_GT(fraction, 0.12);
  EXPECT_LE(fraction, 0.155);
  EXPECT_NEAR(static_cast<double>(as_mask) / masked, 0.8, 0.02);
  EXPECT_NEAR(static_cast<double>(kept) / masked, 0.1, 0.02);  // random ids rarely equal labels
  EXPECT_NEAR(static_cast<double>(swapped) / 3000, 0.5, 0.04);
  EXPECT_GT(truncated_room, 0);  // some samples are short (short_seq_prob)
}

TEST(BertDataset, DeterministicPerIndexAndSeedDependent) {
  const DocumentRange all{0, moby().sentences()->num_documents()};
  const BertDataset a(moby().sentences(), all, 200, config(64), "train");
  const BertDataset b(moby().sentences(), all, 200, config(64), "train");
  BertDatasetConfig other = config(64);
  other.seed = 99;
  const BertDataset c(moby().sentences(), all, 200, other, "train");
  Sample x(64), y(64), z(64);
  int differ = 0;
  for (int64_t i = 0; i < 200; i += 7) {
    a.get(i, x.view);
    b.get(i, y.view);
    a.get(i, z.view);
    EXPECT_EQ(x.tokens, y.tokens);
    EXPECT_EQ(x.labels, y.labels);
    EXPECT_EQ(x.tokens, z.tokens);
    c.get(i, z.view);
    differ += x.tokens != z.tokens;
  }
  EXPECT_GT(differ, 20);
}

TEST(BertDataset, NoBinaryHeadGivesOneSegment) {
  BertDatasetConfig c = config(96);
  c.binary_head = false;
  // Document-level data works without the binary head (one sentence per document).
  const BertDataset ds(moby().documents(), {0, 20}, 50, c, "train");
  Sample s(96);
  for (int64_t i = 0; i < 50; ++i) {
    ds.get(i, s.view);
    EXPECT_EQ(s.tokens[0], tokenizer()->cls_id());
    EXPECT_EQ(s.tokens[s.view.length - 1], tokenizer()->sep_id());
    EXPECT_EQ(s.view.sentence_order, 0);
    for (int64_t k = 0; k < 96; ++k) EXPECT_EQ(s.types[k], 0);
  }
}

TEST(BertDataset, ClearErrors) {
  const auto expect_error = [](auto make, const std::vector<std::string>& words) {
    try {
      make();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
      for (const auto& w : words) {
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
      }
    }
  };
  expect_error([] { BertDataset(moby().documents(), {0, 10}, 10, config(64), "train"); },
               {"--split-sentences", "--bert-no-binary-head", "train split"});
  expect_error([] { BertDataset(moby().sentences(), {0, 10}, 10, config(4), "train"); },
               {"--seq-length"});
  expect_error(
      [] {
        BertDatasetConfig c = config(64);
        c.vocab = nullptr;
        BertDataset(moby().sentences(), {0, 10}, 10, c, "train");
      },
      {"[MASK]"});
  expect_error([] { BertDataset(moby().sentences(), {5, 5}, 10, config(64), "valid"); },
               {"valid split", "--split"});
}

TEST(BertDataset, BuilderSplitsDocuments) {
  BertDataConfig c;
  c.data_path = {moby().prefix()};
  c.split = "90,10,0";
  c.seq_length = 64;
  c.num_samples = {100, 10, std::nullopt};
  c.vocab = tokenizer();
  const BertDatasets d = build_bert_datasets(c);
  ASSERT_TRUE(d.train && d.valid);
  EXPECT_FALSE(d.test);
  EXPECT_GE(d.train->size(), 100);
  EXPECT_GE(d.valid->size(), 10);
  const auto& train = dynamic_cast<const BertDataset&>(*d.train);
  const auto corpus = moby().sentences();
  const int64_t valid_first_sentence = corpus->document_index(124);  // round(0.9 * 138) = 124
  for (const auto& r : train.sample_mapping()) EXPECT_LT(r.first_sentence, valid_first_sentence);
  c.data_path = {"0.5", moby().prefix(), "0.5", moby().prefix()};
  EXPECT_THROW(build_bert_datasets(c), Error);
}

TEST(BertDataset, MockSamplesAreWellFormed) {
  const MockBertDataset mock(100, 32, 64, 1234);
  const auto& vocab = *mock.vocab();
  Sample s(32), t(32);
  int swapped = 0;
  for (int64_t i = 0; i < 100; ++i) {
    mock.get(i, s.view);
    mock.get(i, t.view);
    EXPECT_EQ(s.tokens, t.tokens);
    EXPECT_EQ(s.tokens[0], vocab.cls_id());
    EXPECT_EQ(std::count(s.types.begin(), s.types.end(), 1) > 0, true);
    int masked = 0;
    for (float m : s.loss) masked += m == 1.0f;
    EXPECT_GE(masked, 1);
    swapped += s.view.sentence_order;
  }
  EXPECT_GT(swapped, 20);
  EXPECT_LT(swapped, 80);
}

// Samples computed by scripts/make_bert_samples_fixture.py (Megatron's Python algorithm with
// numpy) for the same corpus; skipped until that fixture is generated.
TEST(BertDataset, MatchesMegatronReferenceSamples) {
  const std::string path = testing::golden_data("bert/bert_samples_fixture.json");
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent; generate it with scripts/make_bert_samples_fixture.py "
                 << "(needs numpy, e.g. on the GPU machine)";
  }
  std::ifstream in(path);
  const nlohmann::json f = nlohmann::json::parse(in);
  BertDatasetConfig c = config(f.at("seq_length").get<int64_t>());
  c.seed = f.at("seed").get<uint32_t>();
  Sample s(c.seq_length);
  for (const auto& sample : f.at("samples")) {
    std::vector<std::vector<int32_t>> sentences = sample.at("sentences");
    build_bert_sample(sentences, sample.at("target_length").get<int32_t>(),
                      sample.at("sample_seed").get<uint64_t>(), c, s.view);
    EXPECT_EQ(s.tokens, sample.at("tokens").get<std::vector<int32_t>>());
    EXPECT_EQ(s.labels, sample.at("labels").get<std::vector<int32_t>>());
    EXPECT_EQ(s.types, sample.at("types").get<std::vector<int32_t>>());
    EXPECT_EQ(s.view.sentence_order, sample.at("is_random").get<int32_t>());
  }
}

}  // namespace
}  // namespace shardlm::data
