// Data-parallel sharding of the training samples, as Megatron's default sampler
// (megatron/training/datasets/data_samplers.py, MegatronPretrainingSampler): the samples are
// taken in order from consumed_samples on, in global micro-batches of micro_batch_size *
// data_parallel_size consecutive indices; data-parallel rank r takes the slice
// [r * micro_batch_size, (r + 1) * micro_batch_size) of each. Resuming needs only
// consumed_samples (the global count, summed over ranks).
//
//   // micro-batch m of an iteration that starts at consumed_samples:
//   auto idx = pretraining_micro_batch_indices(consumed + m * mbs * dp, mbs, rank, dp);
//   for (int64_t i : idx) source.get(i, tokens, mask);
#pragma once

#include <cstdint>
#include <vector>

namespace shardlm::data {

// The global sample indices of this rank's micro-batch that starts the global micro-batch at
// consumed_samples: consumed_samples + rank * micro_batch_size + [0, micro_batch_size).
// Error(kInvalidConfig) for a negative consumed_samples, a non-positive micro_batch_size or
// data_parallel_size, or a rank outside [0, data_parallel_size).
std::vector<int64_t> pretraining_micro_batch_indices(int64_t consumed_samples,
                                                     int64_t micro_batch_size,
                                                     int64_t data_parallel_rank,
                                                     int64_t data_parallel_size);

}  // namespace shardlm::data
