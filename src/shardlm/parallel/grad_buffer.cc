#include "shardlm/parallel/grad_buffer.h"

#include <algorithm>
#include <numeric>
#include <sstream>

#include "shardlm/base/check.h"

namespace shardlm::parallel {

namespace {
int64_t round_up(int64_t n, int64_t divisor) { return (n + divisor - 1) / divisor * divisor; }

// Megatron: parameters start 128-byte aligned (64 values of >= 16-bit precision) and buckets
// end 256-byte aligned (128 values) and divisible by DP, with the distributed optimizer only.
constexpr int64_t kParamAlignment = 64;
constexpr int64_t kBucketAlignment = 128;
}  // namespace

int64_t default_bucket_size(int data_parallel_size) {
  return std::max<int64_t>(40'000'000, int64_t{1'000'000} * data_parallel_size);
}

GradBuffer GradBuffer::plan(const model::ParameterRegistry& reg, const GradBufferConfig& cfg) {
  SHARDLM_REQUIRE(cfg.data_parallel_size >= 1, ErrorKind::kInvalidConfig,
                  "data-parallel size must be positive, got " +
                      std::to_string(cfg.data_parallel_size));
  GradBuffer buf;
  buf.cfg_ = cfg;
  // Megatron: without overlap there is one bucket whatever --ddp-bucket-size says.
  buf.bucket_size_ = !cfg.overlap_grad_reduce ? 0
                     : cfg.bucket_size > 0    ? cfg.bucket_size
                                              : default_bucket_size(cfg.data_parallel_size);
  SHARDLM_REQUIRE(cfg.expert_data_parallel_size >= 0, ErrorKind::kInvalidConfig,
                  "expert-data-parallel size must not be negative");
  const bool shard = cfg.use_distributed_optimizer;
  auto pad_param_start = [&](int64_t i) { return shard ? round_up(i, kParamAlignment) : i; };

  const auto& params = reg.parameters();
  buf.offsets_.assign(params.size(), 0);
  buf.bucket_of_.assign(params.size(), -1);
  int64_t bucket_start = 0;
  // Buckets of the parameters in `group`, in backward order, from bucket_start on.
  auto lay_out = [&](BucketGroup group, int group_size, auto&& member) {
    const int64_t bucket_divisor = std::lcm<int64_t>(group_size, kBucketAlignment);
    // The bucket's size is padded (its start is a multiple of the previous group's divisor
    // only, when the two groups' sizes differ).
    auto pad_bucket_end = [&](int64_t i) {
      return shard ? bucket_start + round_up(i - bucket_start, bucket_divisor) : i;
    };
    int64_t param_start = bucket_start, param_end = bucket_start;
    Bucket open;
    auto close_bucket = [&](int64_t end_unpadded) {
      open.numel_unpadded = end_unpadded - bucket_start;
      open.range = {bucket_start, pad_bucket_end(end_unpadded)};
      open.group = group;
      buf.numel_unpadded_ += open.numel_unpadded;
      bucket_start = open.range.end;
      buf.buckets_.push_back(std::move(open));
      open = Bucket();
    };
    for (size_t k = params.size(); k-- > 0;) {  // reverse: backward order
      if (!member(params[k])) continue;
      const int64_t n = params[k].local_shape.numel();
      // Megatron: with the distributed optimizer a pipeline-tied embedding gets a bucket of
      // its own, so the first and last stage shard it identically and its all-reduce over the
      // embedding group after the reduce-scatter sums matching shards.
      const bool alone = shard && params[k].spec.pipeline_tie != model::PipelineTie::kNone;
      if (alone && !open.params.empty()) {
        close_bucket(param_end);
        param_start = bucket_start;
      }
      param_start = pad_param_start(param_start);
      param_end = param_start + n;
      buf.offsets_[k] = param_start;
      buf.bucket_of_[k] = static_cast<int>(buf.buckets_.size());
      open.params.push_back(k);
      if (alone || (buf.bucket_size_ > 0 && param_end - bucket_start >= buf.bucket_size_)) {
        close_bucket(param_end);
        param_start = bucket_start;
      } else {
        param_start = param_end;
      }
    }
    if (!open.params.empty()) close_bucket(param_end);
  };
  if (cfg.expert_data_parallel_size > 0) {
    lay_out(BucketGroup::kDense, cfg.data_parallel_size,
            [](const model::Parameter& p) { return !p.spec.expert; });
    lay_out(BucketGroup::kExpert, cfg.expert_data_parallel_size,
            [](const model::Parameter& p) { return p.spec.expert; });
  } else {
    lay_out(BucketGroup::kDense, cfg.data_parallel_size, [](const model::Parameter&) { return true; });
  }
  buf.numel_ = bucket_start;
  return buf;
}

void GradBuffer::apply(model::ParameterRegistry& reg) const {
  SHARDLM_CHECK_EQ(reg.parameters().size(), offsets_.size());
  reg.set_flat_layout(offsets_, numel_);
}

Tensor GradBuffer::bucket_view(const Tensor& flat, int b) const {
  SHARDLM_CHECK(b >= 0 && b < num_buckets());
  SHARDLM_CHECK_EQ(flat.numel(), numel_);
  const FlatRange& r = buckets_[static_cast<size_t>(b)].range;
  return flat.flat_view(r.begin, Shape({r.numel()}));
}

int GradBuffer::group_size(int b) const {
  SHARDLM_CHECK(b >= 0 && b < num_buckets());
  return buckets_[static_cast<size_t>(b)].group == BucketGroup::kExpert
             ? cfg_.expert_data_parallel_size
             : cfg_.data_parallel_size;
}

FlatRange GradBuffer::shard(int b, int group_rank) const {
  const int size = group_size(b);
  SHARDLM_CHECK(group_rank >= 0 && group_rank < size);
  const FlatRange& r = buckets_[static_cast<size_t>(b)].range;
  SHARDLM_CHECK_EQ(r.numel() % size, 0);
  const int64_t per_rank = r.numel() / size;
  return {r.begin + group_rank * per_rank, r.begin + (group_rank + 1) * per_rank};
}

std::vector<FlatRange> GradBuffer::bucket_ranges() const {
  std::vector<FlatRange> out;
  for (const Bucket& b : buckets_) out.push_back(b.range);
  return out;
}

std::string GradBuffer::describe(const model::ParameterRegistry& reg) const {
  std::ostringstream os;
  os << "> number of buckets for gradient all-reduce / reduce-scatter: " << buckets_.size()
     << " (bucket size " << (bucket_size_ > 0 ? std::to_string(bucket_size_) : "unbounded")
     << " elements, " << numel_ << " elements with padding, " << numel_unpadded_
     << " without)\n";
  for (size_t b = 0; b < buckets_.size(); ++b) {
    os << ">   bucket " << b << ": " << buckets_[b].numel_unpadded << " elements, "
       << buckets_[b].range.numel() << " padded, "
       << (buckets_[b].group == BucketGroup::kExpert ? "expert, " : "")
       << buckets_[b].params.size() << " parameters ("
       << reg.parameters()[buckets_[b].params.front()].spec.name << " ... "
       << reg.parameters()[buckets_[b].params.back()].spec.name << ")\n";
  }
  return os.str();
}

}  // namespace shardlm::parallel
