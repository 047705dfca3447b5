#include "shardlm/data/bert_dataset_builder.h"

#include "shardlm/data/dataset_split.h"
#include "shardlm/data/masked_lm_corpus.h"

namespace shardlm::data {

BertDatasets build_bert_datasets(const BertDataConfig& config) {
  const MaskedLmCorpus corpus =
      open_masked_lm_corpus(config.data_path, config.split, config.num_samples, "BERT");
  BertDatasetConfig dc;
  dc.seq_length = config.seq_length;
  dc.seed = config.seed;
  dc.masking_probability = config.mask_prob;
  dc.short_seq_prob = config.short_seq_prob;
  dc.binary_head = config.binary_head;
  dc.vocab = config.vocab;
  BertDatasets out;
  std::array<std::unique_ptr<BertSampleSource>*, 3> slots = {&out.train, &out.valid, &out.test};
  for (size_t s = 0; s < 3; ++s) {
    if (!corpus.splits[s]) continue;
    *slots[s] = std::make_unique<BertDataset>(corpus.corpus, *corpus.splits[s],
                                              config.num_samples[s], dc, kSplitNames[s]);
  }
  return out;
}

}  // namespace shardlm::data
