#include "shardlm/data/pretraining_sampler.h"

#include <string>

#include "shardlm/base/error.h"

namespace shardlm::data {

std::vector<int64_t> pretraining_micro_batch_indices(int64_t consumed_samples,
                                                     int64_t micro_batch_size,
                                                     int64_t data_parallel_rank,
                                                     int64_t data_parallel_size) {
  if (consumed_samples < 0 || micro_batch_size <= 0 || data_parallel_size <= 0 ||
      data_parallel_rank < 0 || data_parallel_rank >= data_parallel_size) {
    throw Error(ErrorKind::kInvalidConfig,
                "pretraining sampler: invalid consumed_samples " +
                    std::to_string(consumed_samples) + ", micro_batch_size " +
                    std::to_string(micro_batch_size) + ", data-parallel rank " +
                    std::to_string(data_parallel_rank) + " of " +
                    std::to_string(data_parallel_size));
  }
  std::vector<int64_t> indices(static_cast<size_t>(micro_batch_size));
  const int64_t first = consumed_samples + data_parallel_rank * micro_batch_size;
  for (int64_t i = 0; i < micro_batch_size; ++i) indices[static_cast<size_t>(i)] = first + i;
  return indices;
}

}  // namespace shardlm::data
