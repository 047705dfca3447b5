// create_masked_lm_predictions: Megatron's MaskedWordPieceDataset._create_masked_lm_predictions
// with BERT's or T5's _get_token_mask, drawing from the sample's NumpyRandomState in the same
// order as Megatron, so the same positions get the same replacements.
//
//   candidates  every token but [CLS]/[SEP] starts a candidate, except that a "##" piece joins
//               the previous candidate under whole-word masking (a word's pieces mask together)
//   budget      n = min(p * target_length, max(1, round_half_even(len(tokens) * p)))
//   n-grams     candidate order shuffled; per candidate an n-gram size is drawn -- BERT:
//               P(n) proportional to 1/n (n <= max_ngram); T5 (geometric_ngram_sizes, SpanBERT):
//               n = min(geometric(0.2), max_ngram) -- and shrunk until it fits the budget; a
//               span overlapping an earlier one is skipped
//   replacement BERT: each masked position 80% [MASK], else 50/50 a random vocab id or
//               unchanged; T5 (kAlwaysMask): always [MASK], drawing nothing
//   spans       each masked n-gram (its tokens in position order), sorted by first position
//               (Megatron's masked_spans; T5 replaces each by a sentinel)
// Masking permutation and favouring longer n-grams are not implemented; neither Megatron's BERT
// nor its T5 uses them.
//
//   NumpyRandomState rs(seed + index);
//   std::vector<MaskedToken> masked;
//   create_masked_lm_predictions(tokens, target_length, vocab, {}, rs, masked);
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardlm/data/numpy_random_state.h"
#include "shardlm/data/tokenizer/masked_lm_vocab.h"

namespace shardlm::data {

enum class MaskReplacement {
  kBertMix,     // BERTMaskedWordPieceDataset: 80% [MASK], 10% random id, 10% unchanged
  kAlwaysMask,  // T5MaskedWordPieceDataset: [MASK]
};

struct MaskedLmConfig {
  double masking_probability = 0.15;   // --mask-prob
  int32_t max_ngram = 3;               // masking_max_ngram
  bool whole_word = true;              // masking_do_full_word
  bool geometric_ngram_sizes = false;  // masking_use_geometric_distribution
  MaskReplacement replacement = MaskReplacement::kBertMix;
};

// SpanBERT's p for geometric n-gram sizes (Megatron's masked_dataset.py).
inline constexpr double kGeometricNgramP = 0.2;

struct MaskedToken {
  int32_t position = 0;
  int32_t label = 0;  // the original id
};

// One masked n-gram: masked[begin, end) of the position-sorted masked tokens. Spans never
// interleave (each covers consecutive candidates), so a span is a run of that list.
struct MaskedSpan {
  int32_t begin = 0;
  int32_t end = 0;
};

// Throws Error(kInvalidConfig) unless 0 < masking_probability < 1 (--mask-prob) and
// max_ngram >= 1, as Megatron's MaskedWordPieceDatasetConfig asserts.
void validate_masking(double masking_probability, int32_t max_ngram);

// Masks `tokens` in place; `masked` receives the masked positions, ascending; `spans` (when
// given) the masked n-grams, ascending.
void create_masked_lm_predictions(std::span<int32_t> tokens, int32_t target_length,
                                  const MaskedLmVocab& vocab, const MaskedLmConfig& config,
                                  NumpyRandomState& rs, std::vector<MaskedToken>& masked,
                                  std::vector<MaskedSpan>* spans = nullptr);

}  // namespace shardlm::data
