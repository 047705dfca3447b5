// What BERT and T5 data share (Megatron's MaskedWordPieceDataset): one corpus of sentence-split
// documents (`shardlm preprocess --split-sentences`), cut by --split into train / valid / test
// *document* ranges, and each split's sample mapping (_build_sample_index: helpers.cpp's
// build_mapping over the split's documents, bert_sample_mapping.h).
//
//   MaskedLmCorpus c = open_masked_lm_corpus({"data/wiki_text_sentence"}, "969,30,1",
//                                            {1000, 10, 0}, "T5");
//   auto mapping = build_split_sample_mapping(*c.corpus, *c.splits[0], 1000, mc,
//                                             {.model = "T5", .where = "train split of ..."});
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardlm/data/bert_sample_mapping.h"
#include "shardlm/data/gpt_sample_index.h"
#include "shardlm/data/indexed_dataset.h"

namespace shardlm::data {

struct MaskedLmCorpus {
  std::shared_ptr<const IndexedDataset> corpus;
  // nullopt for a split without documents from which no samples are requested (its dataset is
  // null); a split without documents but with samples requested is kept, and its dataset
  // reports the error.
  std::array<std::optional<DocumentRange>, 3> splits;
};

// --data-path (exactly one prefix for now; blends throw Error(kInvalidConfig) saying so) and
// --split over the corpus' documents. `model` ("BERT", "T5") names the model in errors.
MaskedLmCorpus open_masked_lm_corpus(const std::vector<std::string>& data_path,
                                     const std::string& split,
                                     const std::array<std::optional<int64_t>, 3>& num_samples,
                                     std::string_view model);

struct SplitMappingContext {
  std::string_view model;              // "BERT" / "T5", for messages
  std::string where;                   // e.g. "train split of data/wiki_text_sentence"
  std::string_view few_sentences_fix;  // how to fix documents with < min_sentences sentences
};

// The sample mapping of documents [begin, end) of `corpus` (mapping.num_samples is set from
// num_samples; nullopt = one epoch). Empty when no samples are requested. Errors, prefixed with
// context.where: a range outside the corpus or a negative count (kInvalidArgument); samples
// requested from an empty split, documents all shorter than mapping.min_sentences (> 1), or no
// sample at all (kInvalidConfig).
std::vector<BertSampleRange> build_split_sample_mapping(const IndexedDataset& corpus,
                                                        DocumentRange documents,
                                                        std::optional<int64_t> num_samples,
                                                        BertMappingConfig mapping,
                                                        const SplitMappingContext& context);

// The tokens of one sample's sentences, in order.
std::vector<std::vector<int32_t>> read_sample_sentences(const IndexedDataset& corpus,
                                                        const BertSampleRange& range);

// Megatron: numpy.random.RandomState(seed=(random_seed + idx) % 2**32) for sample idx.
inline uint32_t masked_lm_sample_seed(uint32_t seed, int64_t index) {
  return static_cast<uint32_t>((static_cast<uint64_t>(seed) + static_cast<uint64_t>(index)) %
                               (uint64_t{1} << 32));
}

}  // namespace shardlm::data
