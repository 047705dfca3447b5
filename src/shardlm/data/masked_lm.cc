#include "shardlm/data/masked_lm.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/data/numpy_sum.h"

namespace shardlm::data {
namespace {

// _get_token_mask of BERTMaskedWordPieceDataset (kBertMix) or T5MaskedWordPieceDataset
// (kAlwaysMask): the replacement id, or -1 to keep the token.
int32_t token_mask(const MaskedLmVocab& vocab, MaskReplacement replacement, NumpyRandomState& rs) {
  if (replacement == MaskReplacement::kAlwaysMask) return vocab.mask_id();
  if (rs.random_sample() < 0.8) return vocab.mask_id();
  if (rs.random_sample() >= 0.5) {
    const auto lookup = vocab.random_token_ids();
    return lookup[static_cast<size_t>(rs.randint(0, static_cast<int64_t>(lookup.size())))];
  }
  return -1;
}

}  // namespace

void validate_masking(double masking_probability, int32_t max_ngram) {
  if (!(masking_probability > 0.0 && masking_probability < 1.0)) {
    throw Error(ErrorKind::kInvalidConfig,
                "--mask-prob " + std::to_string(masking_probability) + " must be in (0, 1)");
  }
  if (max_ngram < 1) throw Error(ErrorKind::kInvalidConfig, "masking max n-gram must be >= 1");
}

void create_masked_lm_predictions(std::span<int32_t> tokens, int32_t target_length,
                                  const MaskedLmVocab& vocab, const MaskedLmConfig& config,
                                  NumpyRandomState& rs, std::vector<MaskedToken>& masked,
                                  std::vector<MaskedSpan>* spans) {
  validate_masking(config.masking_probability, config.max_ngram);
  masked.clear();
  if (spans) spans->clear();
  const std::vector<int32_t> original(tokens.begin(), tokens.end());
  // Candidates as [begin, end) into `positions` (each a word's token positions).
  std::vector<int32_t> positions;
  std::vector<std::pair<int32_t, int32_t>> candidates;
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) {
    const int32_t id = tokens[i];
    if (id == vocab.cls_id() || id == vocab.sep_id()) continue;
    const bool joins = vocab.is_continuation(id) && config.whole_word && !candidates.empty();
    positions.push_back(i);
    if (joins) {
      candidates.back().second += 1;  // the previous candidate ends just before
    } else {
      const auto at = static_cast<int32_t>(positions.size()) - 1;
      candidates.push_back({at, at + 1});
    }
  }

  const double p = config.masking_probability;
  const double n_maskings =
      std::min(p * target_length,
               std::max(1.0, std::nearbyint(static_cast<double>(tokens.size()) * p)));

  // nprobs = (1 / [1..N]) / sum; p = nprobs / nprobs.sum() (all N n-gram lists always exist).
  std::vector<double> nprobs(config.max_ngram);
  for (int32_t n = 0; n < config.max_ngram; ++n) nprobs[n] = 1.0 / static_cast<double>(n + 1);
  const double total = numpy_sum(nprobs);
  for (double& v : nprobs) v /= total;
  const double total2 = numpy_sum(nprobs);
  std::vector<double> ngram_p(nprobs);
  for (double& v : ngram_p) v /= total2;

  // candidate_ngrams[k] is determined by its candidate index; shuffle the indices.
  std::vector<int32_t> order(candidates.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<int32_t>(k);
  rs.shuffle(std::span(order));

  std::unordered_set<int32_t> masked_set;
  std::vector<int32_t> ngram;
  std::vector<std::pair<int32_t, int32_t>> span_starts;  // (first position, token count)
  for (const int32_t idx : order) {
    if (static_cast<double>(masked.size()) >= n_maskings) break;
    // T5: SpanBERT's clipped geometric size; BERT: P(n) ~ 1/n over all max_ngram sizes (every
    // candidate has max_ngram n-grams, the last ones shortened, so no size is excluded).
    int32_t n = config.geometric_ngram_sizes
                    ? static_cast<int32_t>(std::min<int64_t>(rs.geometric(kGeometricNgramP),
                                                             config.max_ngram))
                    : static_cast<int32_t>(rs.choice(ngram_p)) + 1;
    bool skip = false;
    while (true) {
      // candidates[idx : idx + n], flattened (shorter at the end of the list).
      const auto last = std::min<size_t>(candidates.size(), static_cast<size_t>(idx) + n) - 1;
      ngram.assign(positions.begin() + candidates[idx].first,
                   positions.begin() + candidates[last].second);
      n -= 1;
      if (n_maskings >= static_cast<double>(masked.size() + ngram.size())) break;
      if (n == 0) {
        skip = true;
        break;
      }
    }
    if (skip) continue;
    if (std::any_of(ngram.begin(), ngram.end(),
                    [&](int32_t pos) { return masked_set.count(pos) > 0; })) {
      continue;
    }
    for (const int32_t pos : ngram) {
      masked_set.insert(pos);
      const int32_t replacement = token_mask(vocab, config.replacement, rs);
      tokens[pos] = replacement >= 0 ? replacement : original[pos];
      masked.push_back({pos, original[pos]});
    }
    span_starts.push_back({ngram.front(), static_cast<int32_t>(ngram.size())});
  }
  // (Megatron shuffles candidate_ngrams once more here, for the permutation option; neither
  // BERT's nor T5's sample uses the random state further, so that draw cannot change the output.)
  std::sort(masked.begin(), masked.end(),
            [](const MaskedToken& a, const MaskedToken& b) { return a.position < b.position; });
  if (!spans) return;
  std::sort(span_starts.begin(), span_starts.end());
  int32_t begin = 0;
  for (const auto& [first_position, count] : span_starts) {
    SHARDLM_CHECK(masked[begin].position == first_position);
    spans->push_back({begin, begin + count});
    begin += count;
  }
}

}  // namespace shardlm::data
