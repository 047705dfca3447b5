#include "shardlm/data/bert_dataset_builder.h"

#include "shardlm/base/error.h"
#include "shardlm/data/dataset_split.h"
#include "shardlm/data/gpt_dataset_builder.h"

namespace shardlm::data {

BertDatasets build_bert_datasets(const BertDataConfig& config) {
  const DataBlend blend = parse_data_blend(config.data_path);
  if (blend.prefixes.empty()) {
    throw Error(ErrorKind::kInvalidConfig, "BERT training needs --data-path PREFIX (or --mock-data)");
  }
  if (blend.prefixes.size() != 1 || blend.weights) {
    throw Error(ErrorKind::kInvalidConfig,
                "BERT data supports one --data-path prefix for now; merge corpora first with "
                "`shardlm merge-datasets`");
  }
  const auto corpus =
      std::make_shared<const IndexedDataset>(IndexedDataset::open(blend.prefixes[0]));
  const auto matrix = parse_split_matrix(config.split);
  BertDatasetConfig dc;
  dc.seq_length = config.seq_length;
  dc.seed = config.seed;
  dc.masking_probability = config.mask_prob;
  dc.short_seq_prob = config.short_seq_prob;
  dc.binary_head = config.binary_head;
  dc.vocab = config.vocab;
  BertDatasets out;
  std::array<std::unique_ptr<BertSampleSource>*, 3> slots = {&out.train, &out.valid, &out.test};
  for (int s = 0; s < 3; ++s) {
    const DocumentRange range = split_document_range(matrix[s], corpus->num_documents());
    if (range.size() == 0 && config.num_samples[s].value_or(0) == 0) continue;
    *slots[s] = std::make_unique<BertDataset>(corpus, range, config.num_samples[s], dc,
                                              kSplitNames[s]);
  }
  return out;
}

}  // namespace shardlm::data
