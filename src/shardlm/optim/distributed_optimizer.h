// DistributedOptimizer (--use-distributed-optimizer): AdamW with its state sharded across the
// data-parallel group, as Megatron Core's DistributedOptimizer (ZeRO stage 1).
//
// The flat buffers are cut into buckets (parallel::GradBuffer: each bucket padded to a multiple
// of DP elements); data-parallel rank r owns the r-th of DP equal contiguous parts of EVERY
// bucket. Per iteration:
//   1. gradients are reduce-scattered bucket by bucket (parallel::GradSync), so this rank's
//      shards of the main-gradient buffer hold the DP-averaged gradient;
//   2. step(): AdamW (ops::adamw_step, the same kernel as optim::AdamW) updates the master
//      weights of the owned shards only, with Adam moments that exist only for those shards
//      (2 × numel / DP values per rank instead of 2 × numel), weight decay per parameter flag;
//   3. the updated shards are all-gathered in place into every rank's flat buffer, bucket by
//      bucket in forward order (the buckets are laid out in backward order, so the last bucket
//      goes first): start_param_gather() is called by step(); finish_param_gather() waits for
//      all. With --overlap-param-gather the trainer waits only as the next forward reaches each
//      bucket's parameters (wait_for(), from the model's parameters-needed hook), as Megatron's
//      forward pre-hooks: the gathers of later layers run while earlier layers compute.
// Master weights: with fp32 training the registry's fp32 values ARE the model weights (as
// Megatron, whose fp32 params serve as their own main params), so only the moments are sharded
// and the all-gather moves fp32 values. Under mixed precision (--bf16 / --fp16, or the CPU's
// --main-params-dtype fp64) the master weights are sharded too, as Megatron's fp32 main params:
// the constructor copies the owned shards' master values out of the registry and releases its
// full master buffer (ParameterRegistry::release_master_values). step() updates the owned
// master shards and writes their compute values in the same AdamW kernel; the all-gather then
// moves compute values (bf16: half the bytes of fp32) straight into the registry's compute
// buffer, so nothing is converted afterwards. Per parameter a rank holds compute value 2 B,
// main gradient 4 B, and (master 4 B + moments 8 B) / DP.
// Padding elements belong to no parameter and are never updated (they stay zero).
// Expert parallelism: a bucket of expert parameters (group 1, parallel::BucketGroup::kExpert) is
// sharded and gathered over the expert-data-parallel group instead (the second communicator).
//
// Thread contract: one per rank, used by its thread. Ownership: references the registry and
// the communicator, which must outlive it; pending all-gathers hold views of the registry's value
// (or, with sharded master weights, compute-value) buffer.
//
//   DistributedOptimizer opt(ctx, reg, buckets, rank.dp(), cfg.adamw());
//   opt.step(ctx, lr);              // after GradSync::wait()
//   opt.finish_param_gather();      // before anything reads the parameters
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/parameter.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::optim {

// One bucket of the flat buffers: [begin, end) in elements, (end - begin) % G == 0 for the size G
// of its group (an index into the constructor's communicators: 0 data-parallel, 1 expert).
struct BucketRange {
  int64_t begin = 0;
  int64_t end = 0;
  int group = 0;
};

class DistributedOptimizer {
 public:
  // ctx: the registry's device (copies the master shards out under mixed precision).
  DistributedOptimizer(DeviceContext& ctx, model::ParameterRegistry& reg,
                       std::vector<BucketRange> buckets, dist::Communicator& dp,
                       const AdamWConfig& cfg);
  // groups[b.group] shards bucket b (groups[0]: data-parallel, groups[1]: expert-data-parallel).
  DistributedOptimizer(DeviceContext& ctx, model::ParameterRegistry& reg,
                       std::vector<BucketRange> buckets, std::vector<dist::Communicator*> groups,
                       const AdamWConfig& cfg);
  ~DistributedOptimizer();
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // AdamW on the owned shards (their gradients must be reduced), then start_param_gather().
  // grad_scale: the gradient clipping factor, applied inside the step (ops::AdamWParams).
  void step(DeviceContext& ctx, double lr, double grad_scale = 1.0);
  // All-gathers every bucket's updated shards (asynchronously) into the flat value buffer.
  void start_param_gather();
  // Waits for the all-gathers; a no-op when none is pending.
  void finish_param_gather();
  // Waits for the gathers of the buckets holding `params` (others may still be in flight).
  void wait_for(std::span<model::Parameter* const> params);
  // After the master shards were written from outside (a checkpoint load): the compute values
  // from them (owned shards converted, then all-gathered; waits). Without sharded master
  // weights: the registry's sync_compute_values().
  void sync_compute_values(DeviceContext& ctx);
  bool param_gather_pending() const;

  int64_t steps_taken() const { return steps_; }
  // Checkpoint restore: the step counter (the moments are written through exp_avg() /
  // exp_avg_sq(), laid out as owned_ranges() concatenated).
  void set_steps_taken(int64_t steps) { steps_ = steps; }
  // This rank's shard of each bucket, in bucket order (grad norm, checkpoints).
  const std::vector<BucketRange>& owned_ranges() const { return owned_; }
  // Optimizer state held by this rank (both moments) and what one unsharded AdamW would hold.
  size_t state_bytes() const;
  size_t unsharded_state_bytes() const;
  // Whether this optimizer holds the master weights (sharded, see above) and their bytes on
  // this rank (0 when the registry's values are the weights).
  bool shards_master_weights() const { return master_.view().defined(); }
  size_t master_bytes() const { return master_.view().defined() ? master_.view().nbytes() : 0; }
  // The owned shards' master values, laid out as the moments (undefined when not sharded).
  const Tensor& master_values() const { return master_.view(); }
  // The moments of the owned shards, concatenated in bucket order.
  const Tensor& exp_avg() const { return exp_avg_.view(); }
  const Tensor& exp_avg_sq() const { return exp_avg_sq_.view(); }

 private:
  struct Run {
    int64_t offset;  // in the flat value/grad buffers
    int64_t state;   // in exp_avg_ / exp_avg_sq_
    int64_t numel;
    bool decay;
  };
  model::ParameterRegistry& reg_;
  std::vector<BucketRange> buckets_, owned_;
  std::vector<dist::Communicator*> groups_;
  dist::Communicator& group_of(const BucketRange& b) const {
    return *groups_[static_cast<size_t>(b.group)];
  }
  AdamWConfig cfg_;
  OwnedTensor exp_avg_, exp_avg_sq_;  // [sum of shard sizes] = [numel / DP]
  OwnedTensor master_;                // the same layout; mixed precision only
  std::vector<Run> runs_;
  std::vector<dist::CommHandle> gathers_;  // per bucket; not pending once waited
  int64_t steps_ = 0;
};

}  // namespace shardlm::optim
