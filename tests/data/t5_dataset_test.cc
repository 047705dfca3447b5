// T5Dataset over Moby Dick preprocessed with --split-sentences and the 8k WordPiece vocab (plus
// 100 sentinels): property tests of Megatron's T5 sample construction, errors, the builder, the
// mock dataset, the SampleSource adapter, and (once generated) samples equal token for token to
// scripts/make_t5_samples_fixture.py's numpy re-run of Megatron's algorithm.
#include "shardlm/data/t5_dataset.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/data/mock_t5_dataset.h"
#include "shardlm/data/preprocess.h"
#include "shardlm/data/t5_dataset_builder.h"
#include "shardlm/data/t5_samples.h"
#include "shardlm/data/tokenizer/wordpiece_tokenizer.h"
#include "tests/data/test_paths.h"

namespace shardlm::data {
namespace {

using testing::ScratchDir;

std::shared_ptr<const WordPieceTokenizer> tokenizer(int vocab_extra_ids = 100) {
  return WordPieceTokenizer::from_file(testing::golden_data("bert/vocab-lowercase-8k.txt"), true,
                                       vocab_extra_ids);
}

std::shared_ptr<const WordPieceTokenizer> t5_tokenizer() {
  static const std::shared_ptr<const WordPieceTokenizer> tok = tokenizer();
  return tok;
}

// Moby Dick at sentence level, written once per test binary run.
class MobySentences {
 public:
  MobySentences() : dir_("t5_moby") {
    PreprocessOptions o;
    o.input = testing::shared_data("corpus/moby_dick.jsonl");
    o.output_prefix = dir_.file("moby");
    o.split_sentences = true;
    o.workers = 2;
    preprocess_jsonl(o, *t5_tokenizer());
    corpus_ = std::make_shared<const IndexedDataset>(
        IndexedDataset::open(dir_.file("moby_text_sentence")));
  }
  std::shared_ptr<const IndexedDataset> corpus() const { return corpus_; }
  std::string prefix() const { return dir_.file("moby_text_sentence"); }
  DocumentRange all() const { return {0, corpus_->num_documents()}; }

 private:
  ScratchDir dir_;
  std::shared_ptr<const IndexedDataset> corpus_;
};

const MobySentences& moby() {
  static const MobySentences corpus;
  return corpus;
}

T5DatasetConfig config(int64_t encoder, int64_t decoder,
                       std::shared_ptr<const MaskedLmVocab> vocab = t5_tokenizer()) {
  T5DatasetConfig c;
  c.encoder_seq_length = encoder;
  c.decoder_seq_length = decoder;
  c.vocab = std::move(vocab);
  return c;
}

struct Sample {
  std::vector<int32_t> encoder, decoder, labels;
  std::vector<float> loss;
  T5SampleView view;
  Sample(int64_t te, int64_t td) : encoder(te), decoder(td), labels(td), loss(td) {
    view = {encoder, decoder, labels, loss};
  }
};

// The tokens a sample of the dataset starts from: its sentences concatenated and truncated.
std::vector<int32_t> source_tokens(const T5Dataset& ds, int64_t index) {
  const BertSampleRange& r = ds.sample_mapping()[static_cast<size_t>(index)];
  std::vector<int32_t> tokens;
  for (int64_t s = r.first_sentence; s < r.end_sentence; ++s) {
    const std::vector<int32_t> sentence = moby().corpus()->sequence(s);
    tokens.insert(tokens.end(), sentence.begin(), sentence.end());
  }
  tokens.resize(std::min<size_t>(tokens.size(), static_cast<size_t>(r.target_length)));
  return tokens;
}

struct Totals {
  int64_t tokens = 0, masked = 0, spans = 0, span_words = 0, longest_span_words = 0;
};

// Megatron's layout, checked as definitions: the encoder is the source with each masked span
// replaced by the next sentinel; the labels are sentinel_i span_i ... [EOS]; the decoder input
// is [BOS] then the labels shifted right; padding, lengths and the loss mask follow.
void expect_t5_layout(const Sample& s, const MaskedLmVocab& vocab, std::span<const int32_t> source,
                      Totals& totals) {
  const int32_t ne = s.view.encoder_length, nd = s.view.decoder_length;
  const auto te = static_cast<int32_t>(s.encoder.size());
  const auto td = static_cast<int32_t>(s.decoder.size());
  ASSERT_GE(ne, 1);
  ASSERT_LE(ne, te);
  ASSERT_GE(nd, 1);
  ASSERT_LE(nd, td);
  for (int32_t k = ne; k < te; ++k) EXPECT_EQ(s.encoder[k], vocab.pad_id());
  for (int32_t k = 0; k < td; ++k) {
    EXPECT_EQ(s.loss[k], k < nd ? 1.0f : 0.0f);
    if (k >= nd) {
      EXPECT_EQ(s.decoder[k], vocab.pad_id());
      EXPECT_EQ(s.labels[k], -1);
    }
  }
  EXPECT_EQ(s.decoder[0], vocab.bos_id());
  for (int32_t k = 1; k < nd; ++k) EXPECT_EQ(s.decoder[k], s.labels[k - 1]);
  EXPECT_EQ(s.labels[nd - 1], vocab.eos_id());

  const std::span<const int32_t> sentinels = vocab.sentinel_ids();
  const auto sentinel_index = [&](int32_t id) -> int64_t {
    const auto it = std::find(sentinels.begin(), sentinels.end(), id);
    return it == sentinels.end() ? -1 : it - sentinels.begin();
  };
  // Spans from the labels: sentinel i, then its tokens.
  std::vector<std::vector<int32_t>> spans;
  for (int32_t k = 0; k < nd - 1; ++k) {
    const int64_t si = sentinel_index(s.labels[k]);
    if (si >= 0) {
      ASSERT_EQ(si, static_cast<int64_t>(spans.size())) << "sentinels out of order";
      spans.emplace_back();
    } else {
      ASSERT_FALSE(spans.empty()) << "labels start with a token, not a sentinel";
      spans.back().push_back(s.labels[k]);
    }
  }
  // The encoder with each sentinel expanded back is the source.
  std::vector<int32_t> rebuilt;
  int64_t next_sentinel = 0;
  for (int32_t k = 0; k < ne; ++k) {
    const int64_t si = sentinel_index(s.encoder[k]);
    if (si < 0) {
      rebuilt.push_back(s.encoder[k]);
      continue;
    }
    ASSERT_EQ(si, next_sentinel++);
    ASSERT_LT(si, static_cast<int64_t>(spans.size()));
    rebuilt.insert(rebuilt.end(), spans[si].begin(), spans[si].end());
  }
  EXPECT_EQ(next_sentinel, static_cast<int64_t>(spans.size()));
  EXPECT_EQ(rebuilt, std::vector<int32_t>(source.begin(), source.end()));
  int64_t span_tokens = 0;
  for (const auto& span : spans) {
    ASSERT_FALSE(span.empty());
    int64_t words = 0;  // whole-word masking: pieces after a span's first token join its words
    for (size_t k = 0; k < span.size(); ++k) words += k == 0 || !vocab.is_continuation(span[k]);
    EXPECT_LE(words, 10);  // masking_max_ngram
    totals.span_words += words;
    totals.longest_span_words = std::max(totals.longest_span_words, words);
    span_tokens += static_cast<int64_t>(span.size());
  }
  // [BOS] (the decoder) / [EOS] (the labels), a sentinel per span and the masked tokens.
  EXPECT_EQ(nd, 1 + static_cast<int64_t>(spans.size()) + span_tokens);
  totals.masked += span_tokens;
  totals.spans += static_cast<int64_t>(spans.size());
  totals.tokens += static_cast<int64_t>(source.size());
}

TEST(T5Dataset, SamplesHaveMegatronsLayout) {
  const int64_t te = 128, td = 64;  // 1 + 2 * floor(0.15 * 126) = 37 <= 64: never too short
  const T5Dataset ds(moby().corpus(), moby().all(), 2000, config(te, td), "train");
  ASSERT_GE(ds.size(), 2000);
  Sample s(te, td);
  Totals totals;
  int64_t short_targets = 0;
  for (int64_t i = 0; i < 2000; ++i) {
    ds.get(i, s.view);
    const std::vector<int32_t> source = source_tokens(ds, i);
    expect_t5_layout(s, *t5_tokenizer(), source, totals);
    short_targets += ds.sample_mapping()[static_cast<size_t>(i)].target_length < te - 2;
    if (::testing::Test::HasFatalFailure()) FAIL() << "sample " << i;
  }
  const double fraction = static_cast<double>(totals.masked) / totals.tokens;
  EXPECT_GT(fraction, 0.12);
  EXPECT_LE(fraction, 0.155);
  // Geometric sizes (mean 4.46 words before clipping to the budget) give longer spans than
  // BERT's 1/n sizes (mean 1.6).
  EXPECT_GT(static_cast<double>(totals.span_words) / totals.spans, 2.0);
  EXPECT_GE(totals.longest_span_words, 8);
  EXPECT_GT(short_targets, 50);  // short_seq_prob 0.1
}

TEST(T5Dataset, DeterministicPerIndexAndSeedDependent) {
  const T5Dataset a(moby().corpus(), moby().all(), 200, config(64, 32), "train");
  const T5Dataset b(moby().corpus(), moby().all(), 200, config(64, 32), "train");
  T5DatasetConfig other = config(64, 32);
  other.seed = 99;
  const T5Dataset c(moby().corpus(), moby().all(), 200, other, "train");
  Sample x(64, 32), y(64, 32), z(64, 32);
  int differ = 0;
  for (int64_t i = 0; i < 200; i += 7) {
    a.get(i, x.view);
    b.get(i, y.view);
    a.get(i, z.view);
    EXPECT_EQ(x.encoder, y.encoder);
    EXPECT_EQ(x.labels, y.labels);
    EXPECT_EQ(x.decoder, z.decoder);
    c.get(i, z.view);
    differ += x.encoder != z.encoder;
  }
  EXPECT_GT(differ, 20);
}

void expect_config_error(const std::function<void()>& make, const std::vector<std::string>& words) {
  try {
    make();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig) << e.what();
    for (const auto& w : words) {
      EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << w << " in: " << e.what();
    }
  }
}

TEST(T5Dataset, DecoderTooShortNamesTheSampleAndTheFlag) {
  const T5Dataset ds(moby().corpus(), moby().all(), 50, config(128, 12), "train");
  Sample s(128, 12);
  expect_config_error(
      [&] {
        for (int64_t i = 0; i < ds.size(); ++i) ds.get(i, s.view);
      },
      {"T5 sample ", "train split", "needs ", "decoder positions", "--decoder-seq-length is 12",
       "raise --decoder-seq-length to at least"});
}

TEST(T5Dataset, SentinelErrorsSayPassVocabExtraIds) {
  // No sentinels at all: caught when the dataset is built.
  expect_config_error(
      [] { T5Dataset(moby().corpus(), moby().all(), 10, config(64, 32, tokenizer(0)), "train"); },
      {"sentinel", "--vocab-extra-ids 100"});
  // One sentinel, samples with several spans: caught per sample.
  const T5Dataset ds(moby().corpus(), moby().all(), 20, config(128, 64, tokenizer(1)), "train");
  Sample s(128, 64);
  expect_config_error(
      [&] {
        for (int64_t i = 0; i < ds.size(); ++i) ds.get(i, s.view);
      },
      {"T5 sample ", "masked spans", "has only 1 sentinel", "--vocab-extra-ids 100"});
}

TEST(T5Dataset, ConfigErrors) {
  expect_config_error([] { T5Dataset(moby().corpus(), moby().all(), 10, config(3, 32), "train"); },
                      {"--encoder-seq-length", ">= 4"});
  expect_config_error([] { T5Dataset(moby().corpus(), moby().all(), 10, config(64, 0), "train"); },
                      {"--decoder-seq-length"});
  expect_config_error(
      [] { T5Dataset(moby().corpus(), moby().all(), 10, config(64, 32, nullptr), "train"); },
      {"vocab"});
  const auto no_bos = std::make_shared<FixedMaskedLmVocab>(
      10, FixedMaskedLmVocab::Ids{.cls = 1, .sep = 2, .pad = 0, .mask = 3},
      std::vector<bool>(10, false), std::vector<int32_t>{9});
  expect_config_error(
      [&] { T5Dataset(moby().corpus(), moby().all(), 10, config(64, 32, no_bos), "train"); },
      {"[BOS]", "BertWordPieceLowerCase"});
  expect_config_error(
      [] {
        T5Dataset(moby().corpus(), {5, 5}, 10, config(64, 32), "valid");
      },
      {"valid split", "--split"});
}

TEST(T5Dataset, BuilderSplitsDocuments) {
  T5DataConfig c;
  c.data_path = {moby().prefix()};
  c.split = "90,10,0";
  c.encoder_seq_length = 64;
  c.decoder_seq_length = 32;
  c.num_samples = {100, 10, std::nullopt};
  c.vocab = t5_tokenizer();
  const T5Datasets d = build_t5_datasets(c);
  ASSERT_TRUE(d.train && d.valid);
  EXPECT_FALSE(d.test);
  EXPECT_GE(d.train->size(), 100);
  EXPECT_GE(d.valid->size(), 10);
  EXPECT_EQ(d.train->encoder_seq_length(), 64);
  EXPECT_EQ(d.train->decoder_seq_length(), 32);
  const auto& train = dynamic_cast<const T5Dataset&>(*d.train);
  const int64_t valid_first_sentence = moby().corpus()->document_index(124);  // round(0.9 * 138)
  for (const auto& r : train.sample_mapping()) {
    EXPECT_LT(r.first_sentence, valid_first_sentence);
    EXPECT_LE(r.target_length, 62);  // _build_sample_index(sequence_length - 2, 1)
  }
  T5DataConfig blend = c;
  blend.data_path = {"0.5", moby().prefix(), "0.5", moby().prefix()};
  expect_config_error([&] { build_t5_datasets(blend); }, {"one --data-path"});
  T5DataConfig no_sentinels = c;
  no_sentinels.vocab = tokenizer(0);
  expect_config_error([&] { build_t5_datasets(no_sentinels); }, {"--vocab-extra-ids 100"});
}

TEST(T5Dataset, MockSamplesAreWellFormedAndLearnable) {
  const MockT5Dataset mock(300, 64, 24, 128, 1234);
  const MaskedLmVocab& vocab = *mock.vocab();
  EXPECT_EQ(vocab.bos_id(), 4);
  EXPECT_EQ(vocab.eos_id(), 5);
  ASSERT_FALSE(vocab.sentinel_ids().empty());
  EXPECT_EQ(vocab.sentinel_ids().back(), 127);  // sentinels last, as Megatron appends them
  Sample s(64, 24), t(64, 24);
  Totals totals;
  for (int64_t i = 0; i < 300; ++i) {
    mock.get(i, s.view);
    mock.get(i, t.view);
    EXPECT_EQ(s.encoder, t.encoder);
    EXPECT_EQ(s.labels, t.labels);
    // The source is a counting run over the words; rebuild and check it.
    const int64_t before = totals.masked;
    std::vector<int32_t> source;
    {
      // Expand sentinels with the label spans (as expect_t5_layout does) to get the run.
      const auto sentinels = vocab.sentinel_ids();
      std::vector<std::vector<int32_t>> spans;
      for (int32_t k = 0; k + 1 < s.view.decoder_length; ++k) {
        if (std::find(sentinels.begin(), sentinels.end(), s.labels[k]) != sentinels.end()) {
          spans.emplace_back();
        } else {
          ASSERT_FALSE(spans.empty());
          spans.back().push_back(s.labels[k]);
        }
      }
      size_t next = 0;
      for (int32_t k = 0; k < s.view.encoder_length; ++k) {
        if (std::find(sentinels.begin(), sentinels.end(), s.encoder[k]) != sentinels.end()) {
          ASSERT_LT(next, spans.size());
          source.insert(source.end(), spans[next].begin(), spans[next].end());
          ++next;
        } else {
          source.push_back(s.encoder[k]);
        }
      }
    }
    ASSERT_EQ(static_cast<int32_t>(source.size()), mock.target_length());
    for (size_t k = 1; k < source.size(); ++k) {
      EXPECT_TRUE(source[k] == source[k - 1] + 1 || source[k] == 6) << "sample " << i;
    }
    expect_t5_layout(s, vocab, source, totals);
    EXPECT_GT(totals.masked, before) << "sample " << i << " has no masked span";
  }
  // A different seed gives different samples.
  const MockT5Dataset other(300, 64, 24, 128, 99);
  other.get(0, t.view);
  mock.get(0, s.view);
  EXPECT_NE(s.encoder, t.encoder);
}

TEST(T5Dataset, MockRejectsTooSmallSettings) {
  expect_config_error([] { MockT5Dataset(10, 64, 24, 20, 1); }, {"--vocab-size >= "});
  expect_config_error([] { MockT5Dataset(10, 6, 24, 128, 1); }, {"--encoder-seq-length"});
  expect_config_error([] { MockT5Dataset(10, 64, 2, 128, 1); }, {"--decoder-seq-length >= 3"});
}

TEST(T5Dataset, SampleSourceAdapter) {
  const T5Samples samples(std::make_unique<MockT5Dataset>(40, 32, 16, 64, 7));
  EXPECT_EQ(samples.size(), 40);
  EXPECT_EQ(samples.seq_length(), 32);
  ASSERT_NE(samples.t5(), nullptr);
  EXPECT_EQ(samples.masked_lm(), nullptr);
  EXPECT_EQ(samples.t5()->decoder_seq_length(), 16);
  std::vector<int32_t> tokens(33);
  std::vector<float> mask(32);
  EXPECT_THROW(samples.get(0, tokens, mask), Error);
}

// Samples computed by scripts/make_t5_samples_fixture.py (Megatron's Python algorithm with
// numpy) for synthetic sentences; skipped until that fixture is generated.
TEST(T5Dataset, MatchesMegatronReferenceSamples) {
  const std::string path = testing::golden_data("t5/t5_samples_fixture.json");
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent; generate it with scripts/make_t5_samples_fixture.py "
                 << "(needs numpy, e.g. on the GPU machine)";
  }
  std::ifstream in(path);
  const nlohmann::json f = nlohmann::json::parse(in);
  const auto tok = tokenizer(f.at("vocab_extra_ids").get<int>());
  EXPECT_EQ(tok->vocab_size(), f.at("vocab_size").get<int64_t>());
  EXPECT_EQ(tok->bos_id(), f.at("bos").get<int32_t>());
  EXPECT_EQ(tok->eos_id(), f.at("eos").get<int32_t>());
  const auto sentinels = f.at("sentinel_ids").get<std::vector<int32_t>>();
  EXPECT_TRUE(std::equal(sentinels.begin(), sentinels.end(), tok->sentinel_ids().begin(),
                         tok->sentinel_ids().end()));
  T5DatasetConfig c = config(f.at("encoder_seq_length").get<int64_t>(),
                             f.at("decoder_seq_length").get<int64_t>(), tok);
  c.seed = f.at("seed").get<uint32_t>();
  Sample s(c.encoder_seq_length, c.decoder_seq_length);
  int index = 0;
  for (const auto& sample : f.at("samples")) {
    const std::vector<std::vector<int32_t>> sentences = sample.at("sentences");
    build_t5_sample(sentences, sample.at("target_length").get<int32_t>(),
                    sample.at("sample_seed").get<uint32_t>(), c, s.view);
    EXPECT_EQ(s.encoder, sample.at("encoder").get<std::vector<int32_t>>()) << "sample " << index;
    EXPECT_EQ(s.decoder, sample.at("decoder").get<std::vector<int32_t>>()) << "sample " << index;
    EXPECT_EQ(s.labels, sample.at("labels").get<std::vector<int32_t>>()) << "sample " << index;
    std::vector<float> loss;
    for (int v : sample.at("loss_mask").get<std::vector<int>>())
      loss.push_back(static_cast<float>(v));
    EXPECT_EQ(s.loss, loss) << "sample " << index;
    EXPECT_EQ(s.view.encoder_length, sample.at("encoder_length").get<int32_t>());
    EXPECT_EQ(s.view.decoder_length, sample.at("decoder_length").get<int32_t>());
    ++index;
  }
  EXPECT_GT(index, 0);
}

}  // namespace
}  // namespace shardlm::data
