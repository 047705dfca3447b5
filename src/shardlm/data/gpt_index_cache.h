// On-disk cache of GptDataset index arrays, so large corpora do not rebuild them every run.
//
// Files, in the cache folder (default: PREFIX_DIR/cache/GPTDataset_indices, as Megatron):
//   <hash>-GPTDataset-<split>-description.txt     what the arrays were built from
//   <hash>-GPTDataset-<split>-document_index.npy  int32
//   <hash>-GPTDataset-<split>-sample_index.npy    int32 [n+1, 2] (int64 when large)
//   <hash>-GPTDataset-<split>-shuffle_index.npy   uint32 (int64 when large)
// The description holds the prefix, the .idx/.bin sizes and modification times, the document
// range, sample count, sequence length and seed; <hash> is a hash of it. A changed corpus or
// config therefore misses the cache and rebuilds ("rebuilt when stale"). The hash differs from
// Megatron's md5 of its own description, so the files are not shared with Megatron runs.
// Writers use temporary names and rename, so concurrent ranks building the same entry are safe.
// The cache is best effort: an unwritable folder or a damaged entry only means a rebuild.
//
//   GptSampleIndex idx = load_or_build_gpt_index("", key, corpus, [&] { return build(...); });
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "shardlm/data/gpt_sample_index.h"
#include "shardlm/data/indexed_dataset.h"

namespace shardlm::data {

struct GptIndexCacheKey {
  std::string prefix;
  DocumentRange documents;
  std::optional<int64_t> num_samples;
  int64_t seq_length;
  uint32_t seed;
  std::string split_name;
};

// cache_dir "" = the default folder next to the data.
GptSampleIndex load_or_build_gpt_index(const std::string& cache_dir, const GptIndexCacheKey& key,
                                       const IndexedDataset& corpus,
                                       const std::function<GptSampleIndex()>& build);

}  // namespace shardlm::data
