#include "shardlm/data/masked_lm_corpus.h"

#include <algorithm>

#include "shardlm/base/error.h"
#include "shardlm/data/dataset_split.h"
#include "shardlm/data/gpt_dataset_builder.h"

namespace shardlm::data {

MaskedLmCorpus open_masked_lm_corpus(const std::vector<std::string>& data_path,
                                     const std::string& split,
                                     const std::array<std::optional<int64_t>, 3>& num_samples,
                                     std::string_view model) {
  const DataBlend blend = parse_data_blend(data_path);
  if (blend.prefixes.empty()) {
    throw Error(ErrorKind::kInvalidConfig, std::string(model) +
                                               " training needs --data-path PREFIX (or "
                                               "--mock-data)");
  }
  if (blend.prefixes.size() != 1 || blend.weights) {
    throw Error(ErrorKind::kInvalidConfig,
                std::string(model) +
                    " data supports one --data-path prefix for now; merge corpora first with "
                    "`shardlm merge-datasets`");
  }
  MaskedLmCorpus out;
  out.corpus = std::make_shared<const IndexedDataset>(IndexedDataset::open(blend.prefixes[0]));
  const auto matrix = parse_split_matrix(split);
  for (size_t s = 0; s < 3; ++s) {
    const DocumentRange range = split_document_range(matrix[s], out.corpus->num_documents());
    if (range.size() == 0 && num_samples[s].value_or(0) == 0) continue;
    out.splits[s] = range;
  }
  return out;
}

std::vector<BertSampleRange> build_split_sample_mapping(const IndexedDataset& corpus,
                                                        DocumentRange documents,
                                                        std::optional<int64_t> num_samples,
                                                        BertMappingConfig mapping,
                                                        const SplitMappingContext& context) {
  const std::string& where = context.where;
  if (documents.begin < 0 || documents.end < documents.begin ||
      documents.end > corpus.num_documents()) {
    throw Error(ErrorKind::kInvalidArgument,
                where + ": document range [" + std::to_string(documents.begin) + ", " +
                    std::to_string(documents.end) + ") is outside the corpus' " +
                    std::to_string(corpus.num_documents()) + " documents");
  }
  if (num_samples && *num_samples < 0) {
    throw Error(ErrorKind::kInvalidArgument, where + ": negative sample count");
  }
  if (documents.size() == 0 || (num_samples && *num_samples == 0)) {
    if (num_samples.value_or(0) > 0) {
      throw Error(ErrorKind::kInvalidConfig,
                  where + " has no documents but " + std::to_string(*num_samples) +
                      " samples were requested; give it a share in --split");
    }
    return {};
  }
  std::vector<int64_t> starts;  // the split's documents' first sentences, then the end
  int64_t max_sentences = 0;
  for (int64_t d = documents.begin; d <= documents.end; ++d) {
    starts.push_back(corpus.document_index(d));
    if (starts.size() > 1) {
      max_sentences = std::max(max_sentences, starts.back() - starts[starts.size() - 2]);
    }
  }
  if (mapping.min_sentences > 1 && max_sentences < mapping.min_sentences) {
    throw Error(ErrorKind::kInvalidConfig,
                where + ": every document holds at most " + std::to_string(max_sentences) +
                    " sentence(s), but a " + std::string(context.model) + " sample needs " +
                    std::to_string(mapping.min_sentences) + ": " +
                    std::string(context.few_sentences_fix));
  }
  if (num_samples) mapping.num_samples = static_cast<uint64_t>(*num_samples);
  std::vector<BertSampleRange> out;
  try {
    out = build_bert_sample_mapping(starts, corpus.sequence_lengths(), mapping);
  } catch (const Error& e) {
    throw Error(e.kind(), where + ": " + e.what());
  }
  if (out.empty()) {
    throw Error(ErrorKind::kInvalidConfig,
                where + " yields no " + std::string(context.model) +
                    " sample: documents need >= " + std::to_string(mapping.min_sentences) +
                    " sentences and none longer than " + std::to_string(kBertLongSentenceLength) +
                    " tokens (preprocess with --split-sentences)");
  }
  return out;
}

std::vector<std::vector<int32_t>> read_sample_sentences(const IndexedDataset& corpus,
                                                        const BertSampleRange& range) {
  std::vector<std::vector<int32_t>> sentences;
  for (int64_t s = range.first_sentence; s < range.end_sentence; ++s) {
    sentences.push_back(corpus.sequence(s));
  }
  return sentences;
}

}  // namespace shardlm::data
