// GradBuffer: the layout of the flat parameter / main-gradient buffers cut into buckets for
// data-parallel gradient reduction, as Megatron Core's _ParamAndGradBuffer (DESIGN §2.6).
//
// Layout rules (Megatron's):
//  - Parameters are placed in REVERSE registration order (roughly the order backward finishes
//    them), so bucket 0 at the start of the buffer holds the last layers and can be reduced
//    first.
//  - A bucket is closed as soon as it holds >= bucket_size elements, so bucket boundaries are
//    always parameter boundaries; the last bucket takes the rest. Without --overlap-grad-reduce
//    there is ONE bucket (Megatron sets bucket_size = None then); --ddp-bucket-size unset means
//    max(40,000,000, 1,000,000 × DP) elements.
//  - With --use-distributed-optimizer every bucket's end is padded to a multiple of
//    lcm(DP, 128) elements (so reduce-scatter / all-gather split it evenly, each rank owning one
//    contiguous shard of every bucket), and every parameter starts on a multiple of 64 elements.
//    A pipeline-tied embedding (ParameterSpec::pipeline_tie) then sits alone in its bucket, so
//    both stages' copies are sharded alike. Without it there is no padding.
//  - Expert parallelism (expert_data_parallel_size > 0): the mixture-of-experts experts'
//    parameters (ParameterSpec::expert) are reduced over the expert-data-parallel group, not the
//    data-parallel one, so they get buckets of their own (Megatron's separate expert buffer):
//    the dense parameters are bucketed first (group kDense), then the expert parameters by the
//    same rules (group kExpert), padded for that group's size. Without it every parameter is
//    in group kDense.
// Padding elements are zero in every flat buffer (values, grads, optimizer state) and belong to
// no parameter: they are reduced and updated as zeros and never change.
//
// plan() only computes the layout; apply() hands it to the ParameterRegistry before finalize(),
// so the registry's flat value and gradient buffers ARE the bucketed buffers (no copies) and
// Parameter::grad stays the main gradient, as Megatron's param.main_grad.
//
// Thread contract: immutable after plan(); one per rank. Value type.
//
//   ParameterRegistry reg;  model.register_parameters(reg);
//   GradBuffer buf = GradBuffer::plan(reg, {.data_parallel_size = dp.size(),
//                                          .overlap_grad_reduce = true});
//   buf.apply(reg);
//   reg.finalize(ctx, DType::kF32, seed);
//   Tensor g0 = buf.bucket_view(reg.flat_grads(), 0);        // bucket 0's gradients
//   FlatRange mine = buf.shard(0, dp.rank());                 // this rank's part of bucket 0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shardlm/model/parameter.h"

namespace shardlm::parallel {

struct GradBufferConfig {
  int data_parallel_size = 1;
  // Elements per bucket (--ddp-bucket-size); <= 0: Megatron's default for this DP size.
  int64_t bucket_size = 0;
  bool overlap_grad_reduce = false;        // false: one bucket
  bool use_distributed_optimizer = false;  // pad buckets / align parameters for sharding
  // > 0: expert parameters in buckets of their own, reduced / sharded over this many ranks
  // (the expert-data-parallel group); 0: with the dense parameters.
  int expert_data_parallel_size = 0;
};

// Megatron's default bucket size: max(40,000,000, 1,000,000 × DP) elements.
int64_t default_bucket_size(int data_parallel_size);

// [begin, end) in elements of a flat buffer.
struct FlatRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t numel() const { return end - begin; }
};

// Which communicator reduces a bucket: the data-parallel (x context) group, or the
// expert-data-parallel group (expert parallelism).
enum class BucketGroup { kDense = 0, kExpert = 1 };

struct Bucket {
  FlatRange range;               // in the flat buffers, padded end
  BucketGroup group = BucketGroup::kDense;
  int64_t numel_unpadded = 0;    // sum of its parameters' sizes plus alignment gaps
  std::vector<size_t> params;    // registry indices, in backward (layout) order
};

class GradBuffer {
 public:
  // Plans the layout of reg's registered parameters (reg need not be finalized).
  static GradBuffer plan(const model::ParameterRegistry& reg, const GradBufferConfig& cfg);

  // Gives the layout to the registry; call before reg.finalize().
  void apply(model::ParameterRegistry& reg) const;

  const GradBufferConfig& config() const { return cfg_; }
  int64_t bucket_size() const { return bucket_size_; }  // effective; 0 = unbounded
  const std::vector<Bucket>& buckets() const { return buckets_; }
  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int64_t numel() const { return numel_; }                  // with padding
  int64_t numel_unpadded() const { return numel_unpadded_; }  // parameters only
  // Element offset of registry parameter i and the bucket holding it.
  int64_t offset_of(size_t param_index) const { return offsets_[param_index]; }
  int bucket_of(size_t param_index) const { return bucket_of_[param_index]; }

  // The view of bucket b in a flat buffer laid out by this plan (values, grads, state).
  Tensor bucket_view(const Tensor& flat, int b) const;
  // Rank r's shard of bucket b: the r-th of G equal contiguous parts, G the size of the
  // bucket's group (data-parallel, or expert-data-parallel for kExpert buckets). Needs the
  // distributed-optimizer padding (kInternal otherwise, unless G == 1).
  FlatRange shard(int b, int group_rank) const;
  // The number of ranks that share bucket b's gradients.
  int group_size(int b) const;
  // All buckets' ranges, in bucket order (what optim::DistributedOptimizer takes).
  std::vector<FlatRange> bucket_ranges() const;

  // Megatron-style summary: bucket count, then per bucket its sizes and parameter names.
  std::string describe(const model::ParameterRegistry& reg) const;

 private:
  GradBufferConfig cfg_;
  int64_t bucket_size_ = 0;
  std::vector<Bucket> buckets_;
  std::vector<int64_t> offsets_;  // [param] element offset
  std::vector<int> bucket_of_;    // [param] bucket index
  int64_t numel_ = 0, numel_unpadded_ = 0;
};

}  // namespace shardlm::parallel
