#include "shardlm/parallel/grad_sync.h"

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::parallel {

GradSync::GradSync(model::ParameterRegistry& reg, const GradBuffer& buffer,
                   dist::Communicator& dp, DeviceContext& ctx, const GradSyncConfig& cfg,
                   dist::Communicator* expert_dp)
    : reg_(reg), buffer_(buffer), dp_(dp), expert_dp_(expert_dp), ctx_(ctx), cfg_(cfg) {
  SHARDLM_CHECK(reg.finalized());
  SHARDLM_CHECK_EQ(reg.numel(), buffer.numel());
  SHARDLM_CHECK_EQ(buffer.config().data_parallel_size, dp.size());
  if (buffer.config().expert_data_parallel_size > 0) {
    SHARDLM_CHECK(expert_dp != nullptr);
    SHARDLM_CHECK_EQ(buffer.config().expert_data_parallel_size, expert_dp->size());
  }
  SHARDLM_CHECK(!cfg.use_distributed_optimizer || buffer.config().use_distributed_optimizer ||
                dp.size() == 1);
  handles_.resize(static_cast<size_t>(buffer.num_buckets()));
  start_iteration();
}

GradSync::~GradSync() {
  // Never leave a collective writing into the registry after we are gone; errors were already
  // reported by whoever abandoned the iteration.
  for (dist::CommHandle& h : handles_) {
    try {
      h.wait();
    } catch (...) {
    }
  }
}

void GradSync::start_iteration() {
  param_ready_.assign(reg_.parameters().size(), 0);
  ready_count_ = 0;
  bucket_pending_.assign(static_cast<size_t>(buffer_.num_buckets()), 0);
  for (const Bucket& b : buffer_.buckets())
    bucket_pending_[&b - buffer_.buckets().data()] = static_cast<int>(b.params.size());
  bucket_started_.assign(static_cast<size_t>(buffer_.num_buckets()), 0);
  started_order_.clear();
  started_during_backward_ = 0;
  last_microbatch_ = false;
  in_backward_ = false;
}

void GradSync::begin_microbatch(bool is_last_microbatch) {
  last_microbatch_ = is_last_microbatch;
  in_backward_ = true;
}

void GradSync::on_grads_ready(std::span<model::Parameter* const> params) {
  // Megatron registers grads as ready only in the last micro-batch and only when overlapping.
  if (!cfg_.overlap_grad_reduce || !last_microbatch_ || !in_backward_) return;
  const model::Parameter* first = reg_.parameters().data();
  for (model::Parameter* p : params) {
    const auto index = static_cast<size_t>(p - first);
    SHARDLM_CHECK_LT(index, reg_.parameters().size());
    SHARDLM_REQUIRE(!param_ready_[index], ErrorKind::kInternal,
                    "grad-ready hook reported " + p->spec.name + " twice in one micro-batch");
    reg_.accumulate_compute_grads(ctx_, *p);  // --bf16: fold before the bucket may start
    mark_ready(index);
  }
}

void GradSync::mark_ready(size_t param_index) {
  param_ready_[param_index] = 1;
  ++ready_count_;
  const int b = buffer_.bucket_of(param_index);
  if (--bucket_pending_[static_cast<size_t>(b)] == 0) start_bucket(b);
}

void GradSync::end_microbatch(bool start_remaining) {
  SHARDLM_CHECK(in_backward_);
  in_backward_ = false;
  if (!last_microbatch_ || !cfg_.overlap_grad_reduce) {
    fold_unreported();
    if (!last_microbatch_) return;  // gradient accumulation: no communication
  }
  // A pipeline chunk's last micro-batch that is not the rank's last backward: its parameters
  // were reported (and folded) above; the other chunks still accumulate.
  if (!start_remaining) return;
  // Last micro-batch: start every bucket not started yet, in bucket (backward) order.
  started_during_backward_ = static_cast<int>(started_order_.size());
  for (const Bucket& bucket : buffer_.buckets())
    for (size_t index : bucket.params)
      if (!param_ready_[index]) {
        if (cfg_.overlap_grad_reduce) reg_.accumulate_compute_grads(ctx_, reg_.parameters()[index]);
        mark_ready(index);
      }
}

void GradSync::fold_unreported() {
  if (!reg_.has_compute_copy()) return;
  if (ready_count_ == 0) {
    reg_.accumulate_compute_grads(ctx_);  // whole buffer; nothing is in flight
    return;
  }
  // Pipelines: buckets of chunks that finished may be reducing; never touch their gradients.
  for (size_t i = 0; i < param_ready_.size(); ++i)
    if (!param_ready_[i]) reg_.accumulate_compute_grads(ctx_, reg_.parameters()[i]);
}

void GradSync::start_bucket(int b) {
  SHARDLM_CHECK(!bucket_started_[static_cast<size_t>(b)]);
  bucket_started_[static_cast<size_t>(b)] = 1;
  started_order_.push_back(b);
  if (dp_.size() == 1) return;  // nothing to reduce (expert parallelism needs DP > 1 too)
  Tensor grads = buffer_.bucket_view(reg_.flat_grads(), b);  // [bucket numel]
  // Megatron's gradient_scaling_factor = 1/DP, applied before a SUM collective; the same for
  // expert buckets (see the banner).
  ops::scale_inplace(ctx_, grads, 1.0 / static_cast<double>(dp_.size()));
  dist::Communicator& group =
      buffer_.buckets()[static_cast<size_t>(b)].group == BucketGroup::kExpert ? *expert_dp_ : dp_;
  if (group.size() == 1) return;  // an expert bucket whose experts no other rank holds
  dist::CommHandle& h = handles_[static_cast<size_t>(b)];
  if (cfg_.use_distributed_optimizer) {
    const FlatRange mine = buffer_.shard(b, group.rank());
    Tensor shard = reg_.flat_grads().flat_view(mine.begin, Shape({mine.numel()}));
    h = group.reduce_scatter_async(shard, grads);  // in place: shard aliases its slot
  } else {
    h = group.all_reduce_async(grads);
  }
  // Without overlap the collective is as good as synchronous: wait() follows right away.
}

void GradSync::wait() {
  for (size_t b = 0; b < handles_.size(); ++b) {
    SHARDLM_REQUIRE(bucket_started_[b], ErrorKind::kInternal,
                    "GradSync::wait: bucket " + std::to_string(b) +
                        " was never started (end_microbatch of the last micro-batch missing)");
    handles_[b].wait();
  }
}

}  // namespace shardlm::parallel
