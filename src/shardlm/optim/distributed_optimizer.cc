#include "shardlm/optim/distributed_optimizer.h"

#include <algorithm>

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::optim {

DistributedOptimizer::DistributedOptimizer(DeviceContext& ctx, model::ParameterRegistry& reg,
                                           std::vector<BucketRange> buckets,
                                           dist::Communicator& dp, const AdamWConfig& cfg)
    : DistributedOptimizer(ctx, reg, std::move(buckets), std::vector<dist::Communicator*>{&dp},
                           cfg) {}

DistributedOptimizer::DistributedOptimizer(DeviceContext& ctx, model::ParameterRegistry& reg,
                                           std::vector<BucketRange> buckets,
                                           std::vector<dist::Communicator*> groups,
                                           const AdamWConfig& cfg)
    : reg_(reg), buckets_(std::move(buckets)), groups_(std::move(groups)), cfg_(cfg) {
  SHARDLM_CHECK(reg.finalized());
  int64_t state_total = 0;
  int64_t previous_end = 0;
  for (const BucketRange& b : buckets_) {
    // In flat order (wait_for searches them), disjoint.
    SHARDLM_CHECK(b.begin >= previous_end && b.begin <= b.end && b.end <= reg.numel());
    SHARDLM_CHECK(b.group >= 0 && static_cast<size_t>(b.group) < groups_.size() &&
                  groups_[static_cast<size_t>(b.group)] != nullptr);
    previous_end = b.end;
    const int64_t dp_size = group_of(b).size(), rank = group_of(b).rank();
    SHARDLM_REQUIRE((b.end - b.begin) % dp_size == 0, ErrorKind::kInternal,
                    "distributed optimizer: bucket [" + std::to_string(b.begin) + ", " +
                        std::to_string(b.end) + ") does not split evenly over " +
                        std::to_string(dp_size) + " ranks of group " + group_of(b).name() +
                        " (missing padding)");
    const int64_t per_rank = (b.end - b.begin) / dp_size;
    owned_.push_back({b.begin + rank * per_rank, b.begin + (rank + 1) * per_rank});
    state_total += per_rank;
  }
  // The parameters' pieces inside the owned shards, in flat order, merged while contiguous and
  // of equal weight-decay flag.
  std::vector<const model::Parameter*> by_offset;
  for (const model::Parameter& p : reg.parameters()) by_offset.push_back(&p);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const model::Parameter* a, const model::Parameter* b) { return a->offset < b->offset; });
  int64_t state_base = 0;
  for (const BucketRange& own : owned_) {
    for (const model::Parameter* p : by_offset) {
      const int64_t lo = std::max(own.begin, p->offset);
      const int64_t hi = std::min(own.end, p->offset + p->local_shape.numel());
      if (lo >= hi) continue;
      const int64_t state = state_base + (lo - own.begin);
      if (!runs_.empty() && runs_.back().decay == p->spec.weight_decay &&
          runs_.back().offset + runs_.back().numel == lo &&
          runs_.back().state + runs_.back().numel == state) {
        runs_.back().numel += hi - lo;
      } else {
        runs_.push_back({lo, state, hi - lo, p->spec.weight_decay});
      }
    }
    state_base += own.end - own.begin;
  }
  const Tensor& values = reg.flat_values();
  SHARDLM_CHECK(values.defined());  // one distributed optimizer per registry
  const DType dtype = values.dtype();
  const Device device = values.device();
  if (reg.has_compute_copy()) {
    // Mixed precision: this rank keeps only its shards' master values (padding included: zero).
    master_ = OwnedTensor::empty(dtype, {state_total}, device);
    int64_t at = 0;
    for (const BucketRange& own : owned_) {
      const Shape n({own.end - own.begin});
      ops::copy(ctx, master_.view().flat_view(at, n), values.flat_view(own.begin, n));
      at += own.end - own.begin;
    }
    reg.release_master_values();
  }
  // After the release: the full master buffer and the moments never coexist.
  exp_avg_ = OwnedTensor::zeros(dtype, {state_total}, device);
  exp_avg_sq_ = OwnedTensor::zeros(dtype, {state_total}, device);
}

DistributedOptimizer::~DistributedOptimizer() {
  for (dist::CommHandle& h : gathers_) {
    try {
      h.wait();
    } catch (...) {
    }
  }
}

void DistributedOptimizer::step(DeviceContext& ctx, double lr, double grad_scale) {
  SHARDLM_CHECK(!param_gather_pending());
  ++steps_;
  // Mixed precision: the owned shards' compute values come out of the same kernel; the others
  // arrive by the all-gather (none at DP = 1).
  const Tensor& compute = reg_.flat_compute_values();  // undefined without a compute copy
  for (const Run& r : runs_) {
    const ops::AdamWParams hp{lr, cfg_.beta1, cfg_.beta2, cfg_.eps,
                              r.decay ? cfg_.weight_decay : 0.0, steps_, grad_scale};
    const Shape shape{r.numel};
    ops::adamw_step(ctx,
                    shards_master_weights() ? master_.view().flat_view(r.state, shape)
                                            : reg_.flat_values().flat_view(r.offset, shape),
                    reg_.flat_grads().flat_view(r.offset, shape),
                    exp_avg_.view().flat_view(r.state, shape),
                    exp_avg_sq_.view().flat_view(r.state, shape), hp,
                    compute.defined() ? compute.flat_view(r.offset, shape) : Tensor());
  }
  start_param_gather();
}

void DistributedOptimizer::start_param_gather() {
  SHARDLM_CHECK(!param_gather_pending());
  // Sharded master weights: the compute values are gathered (step() wrote the owned ones).
  const Tensor& values =
      shards_master_weights() ? reg_.flat_compute_values() : reg_.flat_values();
  gathers_.resize(buckets_.size());
  // Forward order: the last bucket holds the first layers' parameters.
  for (size_t b = buckets_.size(); b-- > 0;) {
    const BucketRange& bucket = buckets_[b];
    const BucketRange& own = owned_[b];
    if (bucket.end == bucket.begin || group_of(bucket).size() == 1) continue;
    // In place: this rank's input is its own slot of the output, as Megatron's param gather.
    gathers_[b] = group_of(bucket).all_gather_async(
        values.flat_view(bucket.begin, Shape({bucket.end - bucket.begin})),
        values.flat_view(own.begin, Shape({own.end - own.begin})));
  }
}

bool DistributedOptimizer::param_gather_pending() const {
  return std::any_of(gathers_.begin(), gathers_.end(),
                     [](const dist::CommHandle& h) { return h.pending(); });
}

void DistributedOptimizer::wait_for(std::span<model::Parameter* const> params) {
  if (gathers_.empty()) return;  // DP = 1, or none started yet
  for (const model::Parameter* p : params) {
    // The bucket whose range holds the parameter's first element.
    const auto it = std::upper_bound(
        buckets_.begin(), buckets_.end(), p->offset,
        [](int64_t offset, const BucketRange& r) { return offset < r.begin; });
    SHARDLM_CHECK(it != buckets_.begin());
    gathers_[static_cast<size_t>(it - buckets_.begin() - 1)].wait();  // no-op once waited
  }
}

void DistributedOptimizer::finish_param_gather() {
  // Wait for all (in issue order) even if one fails, then rethrow the first failure.
  std::exception_ptr first;
  for (size_t b = gathers_.size(); b-- > 0;) {
    try {
      gathers_[b].wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

void DistributedOptimizer::sync_compute_values(DeviceContext& ctx) {
  if (!shards_master_weights()) return reg_.sync_compute_values(ctx);
  finish_param_gather();
  const Tensor& compute = reg_.flat_compute_values();
  int64_t at = 0;
  for (const BucketRange& own : owned_) {
    const Shape n({own.end - own.begin});
    ops::copy(ctx, compute.flat_view(own.begin, n), master_.view().flat_view(at, n));
    at += own.end - own.begin;
  }
  start_param_gather();
  finish_param_gather();
}

size_t DistributedOptimizer::state_bytes() const {
  return exp_avg_.view().nbytes() + exp_avg_sq_.view().nbytes();
}

size_t DistributedOptimizer::unsharded_state_bytes() const {
  return 2 * static_cast<size_t>(reg_.numel()) * dtype_size(reg_.dtype());
}

}  // namespace shardlm::optim
