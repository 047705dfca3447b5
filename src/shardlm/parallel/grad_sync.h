// GradSync: data-parallel gradient reduction over the buckets of a GradBuffer, as Megatron
// Core's DistributedDataParallel + _ParamAndGradBucketGroup.
//
// Per iteration (M micro-batches):
//   start_iteration()                      before the first micro-batch
//   for m in 0..M-1:
//     begin_microbatch(m == M - 1)
//     forward; backward  -- the model's grad-ready hook calls on_grads_ready(params)
//     end_microbatch()
//   wait()                                 before grad clipping / the optimizer
//
// - Pipelines: the same calls around every backward the schedule runs, with
//   begin_microbatch(this is the chunk's last backward) and end_microbatch(this is the rank's
//   last backward); forwards touch no gradient.
// - Gradient accumulation: micro-batches before the last communicate NOTHING; their gradients
//   just accumulate (+=) in the main-gradient buffer.
// - --overlap-grad-reduce: in the last micro-batch, on_grads_ready() marks parameters complete;
//   the moment every parameter of a bucket is complete its reduction is started asynchronously
//   (backward continues meanwhile). end_microbatch() starts the buckets whose parameters were
//   never reported (so a model without the hook is still correct, just not overlapped).
//   Without overlap, end_microbatch() of the last micro-batch reduces the single bucket.
// - Averaging over DP (Megatron's gradient_scaling_factor): each bucket is scaled by 1/DP just
//   before its collective, which SUMS; the result is the mean over data-parallel ranks of the
//   per-rank gradients (each already the mean over that rank's micro-batches, since backward
//   scales the loss by 1/M).
// - Expert parallelism: the buckets of expert parameters (BucketGroup::kExpert) are reduced over
//   the expert-data-parallel group (the ranks holding the same experts), still scaled by
//   1/(DP·CP) as Megatron's expert_gradient_scaling_factor: each expert's gradient already sums
//   the tokens of the EP ranks, so the sum over expert-DP covers every data-parallel rank once.
// - Collective: all-reduce of the whole bucket, or with the distributed optimizer an in-place
//   reduce-scatter: afterwards only this rank's shard of each bucket (GradBuffer::shard) holds
//   the reduced gradient; the rest of the buffer is stale and must not be read.
// - Mixed precision: the compute (bf16) gradients are folded into the fp32 main gradients after
//   every micro-batch (ParameterRegistry::accumulate_compute_grads), per parameter in
//   on_grads_ready() when overlapping, so a bucket is reduced in fp32 after its fold.
//
// Thread contract: one per rank, used by its thread. Ownership: references the registry, buffer
// plan, communicator and device, which must outlive it. Pending collectives hold views of the
// registry's gradient buffer: call wait() (or destroy after an error) before touching it.
//
//   GradSync sync(reg, buf, rank.dp(), ctx, {.overlap_grad_reduce = true});
//   model.set_grad_ready_callback([&](auto params) { sync.on_grads_ready(params); });
#pragma once

#include <span>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/parameter.h"
#include "shardlm/parallel/grad_buffer.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::parallel {

struct GradSyncConfig {
  bool overlap_grad_reduce = false;
  bool use_distributed_optimizer = false;  // reduce-scatter instead of all-reduce
};

class GradSync {
 public:
  // expert_dp: the expert-data-parallel group, needed when the buffer has expert buckets.
  GradSync(model::ParameterRegistry& reg, const GradBuffer& buffer, dist::Communicator& dp,
           DeviceContext& ctx, const GradSyncConfig& cfg,
           dist::Communicator* expert_dp = nullptr);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  void start_iteration();
  void begin_microbatch(bool is_last_microbatch);
  // The grad-ready hook: these parameters' gradients are complete for this micro-batch.
  void on_grads_ready(std::span<model::Parameter* const> params);
  // start_remaining = false (pipelines with several chunks per rank, or schedules whose last
  // backward is not micro-batch M-1): begin_microbatch(true) marked the last backward of one
  // chunk, whose parameters the hook reports; the buckets of unreported parameters start only
  // at the rank's final backward, which passes true.
  void end_microbatch(bool start_remaining = true);
  // Waits for every bucket's reduction (throws Error(kTimeout) naming the dead/hung rank).
  void wait();

  // The bucket-group semantics, visible to tests: collectives started in this iteration (in
  // start order) and how many were started before end_microbatch() of the last micro-batch.
  const std::vector<int>& started_buckets() const { return started_order_; }
  int started_during_backward() const { return started_during_backward_; }

 private:
  void mark_ready(size_t param_index);
  // Mixed precision: folds the compute gradients of the parameters not yet reported.
  void fold_unreported();
  void start_bucket(int b);

  model::ParameterRegistry& reg_;
  const GradBuffer& buffer_;
  dist::Communicator& dp_;
  dist::Communicator* expert_dp_;
  DeviceContext& ctx_;
  GradSyncConfig cfg_;
  bool last_microbatch_ = false;
  bool in_backward_ = false;
  std::vector<char> param_ready_;    // [param]
  size_t ready_count_ = 0;
  std::vector<int> bucket_pending_;  // [bucket] parameters not yet ready
  std::vector<char> bucket_started_;
  std::vector<dist::CommHandle> handles_;  // [bucket]
  std::vector<int> started_order_;
  int started_during_backward_ = 0;
};

}  // namespace shardlm::parallel
