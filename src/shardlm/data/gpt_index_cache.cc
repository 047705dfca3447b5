#include "shardlm/data/gpt_index_cache.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "shardlm/base/error.h"
#include "shardlm/data/npy_file.h"

namespace shardlm::data {
namespace {

namespace fs = std::filesystem;

std::string file_fingerprint(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec);
  return std::to_string(size) + " bytes, mtime " + std::to_string(mtime.time_since_epoch().count());
}

std::string describe(const GptIndexCacheKey& key, const IndexedDataset& corpus) {
  std::ostringstream s;
  s << "class: GPTDataset (ShardLM)\n"
    << "prefix: " << fs::absolute(key.prefix).string() << "\n"
    << "idx: " << file_fingerprint(index_path_of(corpus.prefix())) << "\n"
    << "bin: " << file_fingerprint(bin_path_of(corpus.prefix())) << "\n"
    << "split: " << key.split_name << "\n"
    << "documents: [" << key.documents.begin << ", " << key.documents.end << ")\n"
    << "num_samples: " << (key.num_samples ? std::to_string(*key.num_samples) : "None") << "\n"
    << "sequence_length: " << key.seq_length << "\n"
    << "random_seed: " << key.seed << "\n"
    << "add_extra_token_to_sequence: True\ndrop_last_partial_sequence: True\n";
  return s.str();
}

std::string fnv1a_hex(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

GptSampleIndex load_or_build_gpt_index(const std::string& cache_dir, const GptIndexCacheKey& key,
                                       const IndexedDataset& corpus,
                                       const std::function<GptSampleIndex()>& build) {
  const fs::path folder = cache_dir.empty()
                              ? fs::path(key.prefix).parent_path() / "cache" / "GPTDataset_indices"
                              : fs::path(cache_dir);
  const std::string description = describe(key, corpus);
  const std::string base =
      (folder / (fnv1a_hex(description) + "-GPTDataset-" + key.split_name + "-")).string();
  const std::string description_path = base + "description.txt";
  const std::string document_path = base + "document_index.npy";
  const std::string sample_path = base + "sample_index.npy";
  const std::string shuffle_path = base + "shuffle_index.npy";

  if (fs::exists(shuffle_path) && fs::exists(description_path) &&
      read_all(description_path) == description) {
    try {
      GptSampleIndex index;
      static_cast<GptEpochPlan&>(index) = plan_gpt_epochs(corpus.sequence_lengths(), key.documents,
                                                          key.num_samples, key.seq_length);
      const NpyArray documents = read_npy(document_path);
      index.document_index.assign(documents.values.begin(), documents.values.end());
      index.sample_index = read_npy(sample_path).values;
      index.shuffle_index = read_npy(shuffle_path).values;
      if (index.shuffle_index.size() * 2 + 2 == index.sample_index.size()) return index;
    } catch (const Error&) {
      // unreadable or damaged cache entry: rebuild and overwrite it below
    }
  }

  GptSampleIndex index = build();
  if (index.size() == 0) return index;  // nothing worth caching
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) return index;  // read-only data folder: run uncached (--data-cache-path picks one)
  const int64_t num_samples = index.size();
  const bool large =
      index.sample_index.size() > 0 &&
      (num_samples >= std::numeric_limits<uint32_t>::max() - 1 ||
       index.document_index.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max()));
  try {
    write_npy(document_path, index.document_index,
              {static_cast<int64_t>(index.document_index.size())});
    write_npy(sample_path, index.sample_index, {num_samples + 1, 2},
              large ? NpyDType::kInt64 : NpyDType::kInt32);
    write_npy(shuffle_path, index.shuffle_index, {num_samples},
              large ? NpyDType::kInt64 : NpyDType::kUInt32);
  } catch (const Error&) {
    return index;  // cache is best effort: an unwritable folder only costs a rebuild next run
  }
  const std::string temp_description = description_path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp_description, std::ios::binary);
    out << description;
  }
  fs::rename(temp_description, description_path, ec);
  return index;
}

}  // namespace shardlm::data
