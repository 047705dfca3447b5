// create_masked_lm_predictions: Megatron's MaskedWordPieceDataset._create_masked_lm_predictions
// with BERTMaskedWordPieceDataset._get_token_mask, drawing from the sample's NumpyRandomState in
// the same order as Megatron, so the same positions get the same replacements.
//
//   candidates  every token but [CLS]/[SEP] starts a candidate, except that a "##" piece joins
//               the previous candidate under whole-word masking (a word's pieces mask together)
//   budget      n = min(p * target_length, max(1, round_half_even(len(tokens) * p)))
//   n-grams     candidate order shuffled; per candidate an n-gram size is drawn with
//               P(n) proportional to 1/n (n <= max_ngram), shrunk until it fits the budget; a
//               span overlapping an earlier one is skipped
//   replacement each masked position: 80% [MASK]; else 50/50 a random vocab id or unchanged
// Masking permutation, geometric n-gram sizes and favouring longer n-grams (T5 options) are not
// implemented; Megatron's BERT uses none of them.
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

struct MaskedLmConfig {
  double masking_probability = 0.15;  // --mask-prob
  int32_t max_ngram = 3;              // masking_max_ngram
  bool whole_word = true;             // masking_do_full_word
};

struct MaskedToken {
  int32_t position = 0;
  int32_t label = 0;  // the original id
};

// Masks `tokens` in place; `masked` receives the masked positions, ascending.
void create_masked_lm_predictions(std::span<int32_t> tokens, int32_t target_length,
                                  const MaskedLmVocab& vocab, const MaskedLmConfig& config,
                                  NumpyRandomState& rs, std::vector<MaskedToken>& masked);

}  // namespace shardlm::data
