#include "shardlm/data/t5_dataset_builder.h"

#include "shardlm/data/dataset_split.h"
#include "shardlm/data/masked_lm_corpus.h"

namespace shardlm::data {

T5Datasets build_t5_datasets(const T5DataConfig& config) {
  T5DatasetConfig dc;
  dc.encoder_seq_length = config.encoder_seq_length;
  dc.decoder_seq_length = config.decoder_seq_length;
  dc.seed = config.seed;
  dc.masking_probability = config.mask_prob;
  dc.short_seq_prob = config.short_seq_prob;
  dc.vocab = config.vocab;
  validate_t5_config(dc);  // before opening the corpus: flag errors come first
  const MaskedLmCorpus corpus =
      open_masked_lm_corpus(config.data_path, config.split, config.num_samples, "T5");
  T5Datasets out;
  std::array<std::unique_ptr<T5SampleSource>*, 3> slots = {&out.train, &out.valid, &out.test};
  for (size_t s = 0; s < 3; ++s) {
    if (!corpus.splits[s]) continue;
    *slots[s] = std::make_unique<T5Dataset>(corpus.corpus, *corpus.splits[s], config.num_samples[s],
                                            dc, kSplitNames[s]);
  }
  return out;
}

}  // namespace shardlm::data
