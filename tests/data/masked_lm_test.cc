#include "shardlm/data/masked_lm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

namespace shardlm::data {
namespace {

// [PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3; ids 4..99 words, id % 10 == 9 is a "##" piece.
FixedMaskedLmVocab make_vocab() {
  std::vector<bool> continuation(100, false);
  for (int id = 4; id < 100; ++id) continuation[id] = id % 10 == 9;
  return FixedMaskedLmVocab(100, {.cls = 1, .sep = 2, .pad = 0, .mask = 3}, continuation);
}

std::vector<int32_t> sample_tokens(int words, uint32_t seed) {
  std::vector<int32_t> t = {1};
  NumpyRandomState rs(seed);
  for (int i = 0; i < words; ++i) {
    t.push_back(static_cast<int32_t>(rs.randint(4, 100)));
    if (i == words / 2) t.push_back(2);
  }
  t.push_back(2);
  return t;
}

TEST(MaskedLm, BudgetPositionsAndReplacements) {
  const FixedMaskedLmVocab vocab = make_vocab();
  for (uint32_t seed = 0; seed < 200; ++seed) {
    std::vector<int32_t> tokens = sample_tokens(60, seed);
    const std::vector<int32_t> original = tokens;
    NumpyRandomState rs(seed);
    std::vector<MaskedToken> masked;
    create_masked_lm_predictions(tokens, 100, vocab, {}, rs, masked);
    const double budget = std::min(0.15 * 100, std::max(1.0, std::nearbyint(tokens.size() * 0.15)));
    EXPECT_LE(masked.size(), budget);
    EXPECT_GE(masked.size(), 1u);
    std::vector<bool> is_masked(tokens.size(), false);
    for (size_t k = 0; k < masked.size(); ++k) {
      if (k > 0) EXPECT_LT(masked[k - 1].position, masked[k].position);
      const int32_t p = masked[k].position;
      is_masked[p] = true;
      EXPECT_EQ(masked[k].label, original[p]);
      EXPECT_NE(original[p], 1);
      EXPECT_NE(original[p], 2);
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (!is_masked[i]) EXPECT_EQ(tokens[i], original[i]);
      // Whole words: a "##" piece is masked exactly when the token before it is.
      if (i > 0 && vocab.is_continuation(original[i]) && original[i - 1] > 2) {
        EXPECT_EQ(is_masked[i], is_masked[i - 1]) << "seed " << seed << " position " << i;
      }
    }
  }
}

TEST(MaskedLm, WithoutWholeWordsPiecesAreSeparateCandidates) {
  const FixedMaskedLmVocab vocab = make_vocab();
  int split_words = 0;
  for (uint32_t seed = 0; seed < 300; ++seed) {
    std::vector<int32_t> tokens = sample_tokens(60, seed);
    const std::vector<int32_t> original = tokens;
    NumpyRandomState rs(seed);
    std::vector<MaskedToken> masked;
    create_masked_lm_predictions(tokens, 100, vocab, {.whole_word = false}, rs, masked);
    std::vector<bool> is_masked(tokens.size(), false);
    for (const auto& m : masked) is_masked[m.position] = true;
    for (size_t i = 1; i < tokens.size(); ++i) {
      split_words += vocab.is_continuation(original[i]) && original[i - 1] > 2 &&
                     is_masked[i] != is_masked[i - 1];
    }
  }
  EXPECT_GT(split_words, 0);
}

TEST(MaskedLm, SameStateSameResult) {
  const FixedMaskedLmVocab vocab = make_vocab();
  std::vector<int32_t> a = sample_tokens(80, 5), b = a;
  NumpyRandomState ra(42), rb(42);
  std::vector<MaskedToken> ma, mb;
  create_masked_lm_predictions(a, 120, vocab, {}, ra, ma);
  create_masked_lm_predictions(b, 120, vocab, {}, rb, mb);
  EXPECT_EQ(a, b);
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t k = 0; k < ma.size(); ++k) EXPECT_EQ(ma[k].position, mb[k].position);
}

// T5's settings (pretrain_t5.py): geometric n-gram sizes up to 10 words, always [MASK], spans.
TEST(MaskedLm, T5SpansPartitionTheMaskedTokensInOrder) {
  const FixedMaskedLmVocab vocab = make_vocab();
  const MaskedLmConfig t5{.max_ngram = 10,
                          .geometric_ngram_sizes = true,
                          .replacement = MaskReplacement::kAlwaysMask};
  int64_t spans_seen = 0, longest_words = 0;
  for (uint32_t seed = 0; seed < 300; ++seed) {
    std::vector<int32_t> tokens = sample_tokens(120, seed);
    const std::vector<int32_t> original = tokens;
    NumpyRandomState rs(seed);
    std::vector<MaskedToken> masked;
    std::vector<MaskedSpan> spans;
    create_masked_lm_predictions(tokens, 200, vocab, t5, rs, masked, &spans);
    ASSERT_FALSE(spans.empty());
    EXPECT_EQ(spans.front().begin, 0);
    EXPECT_EQ(spans.back().end, static_cast<int32_t>(masked.size()));
    for (size_t s = 0; s < spans.size(); ++s) {
      ASSERT_LT(spans[s].begin, spans[s].end);
      if (s > 0) EXPECT_EQ(spans[s].begin, spans[s - 1].end);
      // A span is consecutive words: no unmasked word (or [CLS]/[SEP]-free gap) inside it.
      int64_t words = 0;
      for (int32_t m = spans[s].begin; m < spans[s].end; ++m) {
        if (m > spans[s].begin) {
          for (int32_t p = masked[m - 1].position + 1; p < masked[m].position; ++p) {
            EXPECT_TRUE(original[p] == 1 || original[p] == 2) << "seed " << seed;
          }
        }
        words += !vocab.is_continuation(masked[m].label) || m == spans[s].begin;
      }
      EXPECT_LE(words, 10);
      longest_words = std::max(longest_words, words);
    }
    spans_seen += static_cast<int64_t>(spans.size());
    for (const MaskedToken& m : masked) EXPECT_EQ(tokens[m.position], vocab.mask_id());
  }
  EXPECT_GT(longest_words, 5);  // geometric sizes reach long spans (P(n >= 6) = 0.33)
  EXPECT_GT(spans_seen, 300);
}

TEST(MaskedLm, BertSpansAreReportedToo) {
  const FixedMaskedLmVocab vocab = make_vocab();
  std::vector<int32_t> a = sample_tokens(60, 9), b = a;
  NumpyRandomState ra(9), rb(9);
  std::vector<MaskedToken> ma, mb;
  std::vector<MaskedSpan> spans;
  create_masked_lm_predictions(a, 100, vocab, {}, ra, ma);
  create_masked_lm_predictions(b, 100, vocab, {}, rb, mb, &spans);
  EXPECT_EQ(a, b);  // asking for spans changes nothing
  ASSERT_EQ(ma.size(), mb.size());
  ASSERT_FALSE(spans.empty());
  EXPECT_EQ(spans.back().end, static_cast<int32_t>(mb.size()));
}

}  // namespace
}  // namespace shardlm::data
