// build_gpt_datasets: the data loader API the trainer calls. It turns Megatron's data flags into
// train / valid / test SampleSources with Megatron Core's BlendedMegatronDatasetBuilder
// semantics, so every split yields the same samples in the same order as Megatron.
//
//   --data-path P                 one corpus, cut by --split into train/valid/test GptDatasets
//   --data-path w1 P1 w2 P2 ...   weighted blend: each split is a BlendedDataset over the
//                                 corpora's splits; corpus i gets ceil(ceil(n*w_i)*1.005) samples
//                                 built and ceil(n*w_i) used (Megatron's mid-level surplus)
//   --data-path P1 P2 ...         unweighted: each corpus one epoch, blended by their sizes
//   --train-data-path/--valid-data-path/--test-data-path  one blend per split (no --split)
//
// num_samples[i] is the sample count the trainer will draw from split i (Megatron:
// train_iters*global_batch, (train_iters/eval_interval+1)*eval_iters*global_batch,
// eval_iters*global_batch; see megatron_split_sample_counts). A split with no data and no
// samples requested is an empty dataset; a split with no data but samples requested is an
// Error(kInvalidConfig) that says which split and how to fix the flags.
//
// Index arrays are cached (gpt_index_cache.h) in data_cache_path, or next to each corpus.
//
//   GptDataConfig c;
//   c.data_path = {"0.7", "data/web_text_document", "0.3", "data/books_text_document"};
//   c.split = "969,30,1"; c.seq_length = 2048; c.seed = 1234;
//   c.num_samples = megatron_split_sample_counts(/*train_iters=*/1000, /*global_batch=*/256,
//                                                /*eval_interval=*/100, /*eval_iters=*/10);
//   GptDatasets data = build_gpt_datasets(c);
//   data.train->get(consumed_samples + i, tokens, mask);
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardlm/data/sample_source.h"

namespace shardlm::data {

struct GptDataConfig {
  std::vector<std::string> data_path;  // Megatron --data-path words
  std::vector<std::string> train_data_path;
  std::vector<std::string> valid_data_path;
  std::vector<std::string> test_data_path;
  std::string split = "969, 30, 1";
  int64_t seq_length = 0;
  uint32_t seed = 1234;
  std::array<std::optional<int64_t>, 3> num_samples;  // train, valid, test (nullopt = 1 epoch)
  std::optional<std::string> data_cache_path;         // nullopt = next to the data
  bool eod_mask_loss = false;
  int32_t eod_id = -1;
  double mid_level_dataset_surplus = 0.005;
};

struct GptDatasets {
  std::unique_ptr<SampleSource> train;  // null only when the split has no share at all
  std::unique_ptr<SampleSource> valid;
  std::unique_ptr<SampleSource> test;
};

// A parsed --data-path: prefixes, and weights when given.
struct DataBlend {
  std::vector<std::string> prefixes;
  std::optional<std::vector<double>> weights;
};
// Megatron's get_blend_from_list: an even list whose every other word is a number is
// "w1 p1 w2 p2 ..."; anything else is a list of prefixes.
DataBlend parse_data_blend(const std::vector<std::string>& words);

std::array<std::optional<int64_t>, 3> megatron_split_sample_counts(int64_t train_samples,
                                                                   int64_t global_batch_size,
                                                                   int64_t train_iters,
                                                                   int64_t eval_interval,
                                                                   int64_t eval_iters);

GptDatasets build_gpt_datasets(const GptDataConfig& config);

}  // namespace shardlm::data
