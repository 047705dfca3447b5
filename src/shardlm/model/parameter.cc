#include "shardlm/model/parameter.h"

#include <algorithm>
#include <cstring>

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::model {

namespace {
// Zeroes a flat buffer (memset on the host, where the CPU backend has no bf16 fill).
void zero_buffer(DeviceContext& ctx, const Tensor& t) {
  if (t.device().is_cpu())
    std::memset(t.raw(), 0, t.nbytes());
  else
    ops::fill(ctx, t, 0.0);
}

Shape local_shape_of(const ParameterSpec& spec) {
  std::vector<int64_t> dims = spec.global_shape.dims();
  if (spec.split.is_split() && !spec.split.runs.empty()) {
    // Explicit runs: rows of the leading axis (so each run is contiguous locally), inside it.
    SHARDLM_REQUIRE(spec.split.tp_dim == 0 && !dims.empty(), ErrorKind::kInternal,
                    "parameter " + spec.name + ": explicit split runs need split axis 0");
    int64_t rows = 0;
    for (const SplitSegment& r : spec.split.runs) {
      SHARDLM_REQUIRE(r.begin >= 0 && r.size > 0 && r.begin + r.size <= dims[0],
                      ErrorKind::kInternal,
                      "parameter " + spec.name + " of shape " + spec.global_shape.to_string() +
                          ": split run [" + std::to_string(r.begin) + ", " +
                          std::to_string(r.begin + r.size) + ") is outside axis 0");
      rows += r.size;
    }
    dims[0] = rows;
  } else if (spec.split.is_split()) {
    const int d = spec.split.tp_dim;
    const int64_t parts = int64_t{spec.split.tp_size} * spec.split.chunks;
    SHARDLM_REQUIRE(spec.split.chunks >= 1 && d < static_cast<int>(dims.size()) &&
                        dims[d] % parts == 0,
                    ErrorKind::kInvalidConfig,
                    "parameter " + spec.name + " of shape " + spec.global_shape.to_string() +
                        " cannot be split " + std::to_string(spec.split.tp_size) +
                        " ways along axis " + std::to_string(d) +
                        (spec.split.chunks > 1
                             ? " in each of " + std::to_string(spec.split.chunks) + " chunks"
                             : std::string()));
    dims[d] /= spec.split.tp_size;
  }
  return Shape(dims);
}
}  // namespace

ShardIndexMap Parameter::index_map() const {
  ShardIndexMap m;
  if (!spec.split.is_split()) return m;
  SHARDLM_CHECK(spec.split.runs.empty());  // explicit runs: one map per run (initialize_parameter)
  const int d = spec.split.tp_dim;
  m.local_extent = local_shape[d];
  m.global_extent = spec.global_shape[d];
  for (int a = d + 1; a < local_shape.rank(); ++a) m.inner *= local_shape[a];
  m.chunk = m.global_extent / spec.split.chunks;
  m.block = m.chunk / spec.split.tp_size;
  m.block_offset = spec.split.tp_rank * m.block;
  return m;
}

int64_t Parameter::global_index(int64_t local_index) const {
  if (!spec.split.is_split()) return local_index;
  // Decompose the local index in the local shape, shift the split axis, recompose globally.
  const int rank = local_shape.rank();
  int64_t rem = local_index, global = 0, stride = 1;
  std::vector<int64_t> coord(rank);
  for (int a = rank - 1; a >= 0; --a) {
    coord[a] = rem % local_shape[a];
    rem /= local_shape[a];
  }
  coord[spec.split.tp_dim] = spec.split.global_coordinate(coord[spec.split.tp_dim],
                                                          spec.global_shape[spec.split.tp_dim]);
  for (int a = rank - 1; a >= 0; --a) {
    global += coord[a] * stride;
    stride *= spec.global_shape[a];
  }
  return global;
}

std::vector<SplitSegment> Split::segments(int64_t extent) const {
  if (!is_split()) return {{0, extent, false}};
  if (!runs.empty()) return runs;
  const int64_t chunk = extent / chunks, block = chunk / tp_size;
  std::vector<SplitSegment> out;
  for (int c = 0; c < chunks; ++c) out.push_back({c * chunk + tp_rank * block, block, false});
  return out;
}

std::vector<std::pair<int64_t, int64_t>> Parameter::replica_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (!spec.split.is_split() || spec.split.runs.empty()) return out;
  const int64_t row = local_shape.numel() / local_shape[0];  // runs are rows of axis 0
  int64_t local = 0;
  for (const SplitSegment& r : spec.split.runs) {
    if (r.replica) out.emplace_back(local * row, (local + r.size) * row);
    local += r.size;
  }
  return out;
}

void ParameterRegistry::add(const ParameterSpec& spec) {
  SHARDLM_CHECK(!finalized_);
  SHARDLM_REQUIRE(!contains(spec.name), ErrorKind::kInternal,
                  "parameter " + spec.name + " registered twice");
  Parameter p;
  p.spec = spec;
  p.local_shape = local_shape_of(spec);
  p.offset = total_;
  total_ += p.local_shape.numel();
  index_[spec.name] = params_.size();
  params_.push_back(std::move(p));
}

void ParameterRegistry::set_flat_layout(const std::vector<int64_t>& offsets, int64_t total) {
  SHARDLM_CHECK(!finalized_);
  SHARDLM_CHECK_EQ(offsets.size(), params_.size());
  // Every parameter inside [0, total) and no two overlapping.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (size_t i = 0; i < params_.size(); ++i)
    ranges.emplace_back(offsets[i], offsets[i] + params_[i].local_shape.numel());
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 0; i < ranges.size(); ++i) {
    SHARDLM_CHECK(ranges[i].first >= 0 && ranges[i].second <= total);
    if (i > 0) SHARDLM_CHECK(ranges[i - 1].second <= ranges[i].first);
  }
  for (size_t i = 0; i < params_.size(); ++i) params_[i].offset = offsets[i];
  total_ = total;
}

void initialize_parameter(DeviceContext& ctx, const Parameter& param, uint64_t seed,
                          Tensor out) {
  switch (param.spec.init.kind) {
    case Init::Kind::kOnes: return ops::fill(ctx, out, 1.0);
    case Init::Kind::kZeros: return ops::fill(ctx, out, 0.0);
    case Init::Kind::kNormal: break;
  }
  const PhiloxKey key = init_normal_key(seed, param.spec.name);  // hashed once, not per element
  if (param.spec.split.runs.empty())
    return ops::init_normal(ctx, out, key, param.spec.init.stddev, param.index_map());
  // Explicit runs of axis-0 rows (replicated query groups): each is a contiguous local row
  // block at global rows [begin, begin + size).
  const int64_t rows = param.spec.global_shape[0];
  const int64_t row = param.local_shape.numel() / param.local_shape[0];
  int64_t local_row = 0;
  for (const SplitSegment& r : param.spec.split.runs) {
    const ShardIndexMap m{.local_extent = r.size, .global_extent = rows, .inner = row,
                          .chunk = rows, .block = r.size, .block_offset = r.begin};
    ops::init_normal(ctx, out.flat_view(local_row * row, Shape{r.size * row}), key,
                     param.spec.init.stddev, m);
    local_row += r.size;
  }
}

void initialize_parameter(const Parameter& param, uint64_t seed, Tensor out) {
  SHARDLM_CHECK(out.device().is_cpu());
  DeviceContext host = DeviceContext::cpu();
  initialize_parameter(host, param, seed, out);
}

void ParameterRegistry::finalize(DeviceContext& ctx, DType dtype, uint64_t seed) {
  finalize(ctx, dtype, seed, dtype);
}

void ParameterRegistry::finalize(DeviceContext& ctx, DType dtype, uint64_t seed,
                                 DType compute_dtype) {
  SHARDLM_CHECK(!finalized_);
  dtype_ = dtype;
  compute_dtype_ = compute_dtype;
  const Device device = ctx.device();
  values_ = OwnedTensor::zeros(dtype, {total_}, device);  // zero: padding of set_flat_layout
  grads_ = OwnedTensor::zeros(dtype, {total_}, device);
  // Initialised where they live: ops::init_normal gives the same bits on every backend.
  for (Parameter& p : params_) {
    p.value = values_.view().flat_view(p.offset, p.local_shape);
    p.grad = grads_.view().flat_view(p.offset, p.local_shape);
    initialize_parameter(ctx, p, seed, p.value);
  }
  const bool mixed = compute_dtype != dtype && total_ > 0;
  any_fused_ = false;
  if (mixed) {
    compute_values_ = OwnedTensor::empty(compute_dtype, {total_}, device);
    const int64_t grad_numel = compute_grad_numel();
    // Fused parameters have no compute gradient: the buffer then packs the others back to
    // back (their layout no longer mirrors the master buffer's).
    any_fused_ = grad_numel != total_;
    if (grad_numel > 0) compute_grads_ = OwnedTensor::zeros(compute_dtype, {grad_numel}, device);
  }
  int64_t packed = 0;
  for (Parameter& p : params_) {
    p.compute_value =
        mixed ? compute_values_.view().flat_view(p.offset, p.local_shape) : p.value;
    p.main_grad_fused = mixed && fusion_ && p.spec.fuse_main_grad;
    if (!mixed) {
      p.compute_grad = p.grad;
    } else if (p.main_grad_fused) {
      p.compute_grad = Tensor();
    } else {
      p.compute_grad = compute_grads_.view().flat_view(any_fused_ ? packed : p.offset,
                                                       p.local_shape);
      packed += p.local_shape.numel();
    }
  }
  for (Parameter& p : params_) p.main_grad_empty = false;
  finalized_ = true;
  sync_compute_values(ctx);
}

size_t ParameterRegistry::compute_copy_bytes() const {
  if (!has_compute_copy()) return 0;
  return compute_values_.view().nbytes() + compute_grads_.view().nbytes();
}

void ParameterRegistry::sync_compute_values(DeviceContext& ctx) {
  if (!has_compute_copy()) return;
  SHARDLM_REQUIRE(has_master_values(), ErrorKind::kInternal,
                  "sync_compute_values: the master values were released to a distributed "
                  "optimizer, which refreshes the compute values itself");
  ops::copy(ctx, compute_values_.view(), values_.view());
}

void ParameterRegistry::release_master_values() {
  SHARDLM_CHECK(finalized_ && has_compute_copy());
  values_ = OwnedTensor();
  for (Parameter& p : params_) p.value = Tensor();
}

void ParameterRegistry::set_gradient_accumulation_fusion(bool on) {
  SHARDLM_CHECK(!finalized_);
  fusion_ = on;
}

int64_t ParameterRegistry::compute_grad_numel() const {
  int64_t n = total_;
  if (!fusion_) return n;
  for (const Parameter& p : params_)
    if (p.spec.fuse_main_grad) n -= p.local_shape.numel();
  return n;
}

Parameter::FusedMainGrad Parameter::take_fused_main_grad() {
  SHARDLM_CHECK(main_grad_fused);
  const bool accumulate = !main_grad_empty;
  main_grad_empty = false;
  return {grad, accumulate};
}

void ParameterRegistry::set_all_main_grads_empty(bool empty) {
  for (Parameter& p : params_) p.main_grad_empty = empty;
}

void ParameterRegistry::accumulate_compute_grads(DeviceContext& ctx) {
  if (!has_compute_copy()) return;
  const auto empty = static_cast<size_t>(std::count_if(
      params_.begin(), params_.end(), [](const Parameter& p) { return p.main_grad_empty; }));
  // Parameter by parameter when the compute gradients are packed (fusion) or some parameters
  // folded already this step; else the whole flat buffer in one pass.
  if (any_fused_ || (empty != 0 && empty != params_.size())) {
    for (Parameter& p : params_) accumulate_compute_grads(ctx, p);
    return;
  }
  // The whole flat buffer in one pass (padding included: it is zero in both buffers).
  ops::accumulate_and_zero(ctx, grads_.view(), compute_grads_.view(), /*assign=*/empty != 0);
  set_all_main_grads_empty(false);
}

void ParameterRegistry::accumulate_compute_grads(DeviceContext& ctx, Parameter& param) {
  if (!has_compute_copy() || param.main_grad_fused) return;
  const Shape shape({param.local_shape.numel()});
  Tensor main = grads_.view().flat_view(param.offset, shape);
  Tensor compute = param.compute_grad.reshape(shape);
  ops::accumulate_and_zero(ctx, main, compute, /*assign=*/param.main_grad_empty);
  param.main_grad_empty = false;
}

void ParameterRegistry::begin_step_grads(DeviceContext& ctx) {
  if (!has_compute_copy()) return zero_grads(ctx);
  set_all_main_grads_empty(true);
}

void ParameterRegistry::end_step_grads(DeviceContext& ctx) {
  if (!has_compute_copy()) return;
  for (Parameter& p : params_)
    if (p.main_grad_empty) {
      zero_buffer(ctx, grads_.view().flat_view(p.offset, Shape({p.local_shape.numel()})));
      p.main_grad_empty = false;
    }
}

Parameter& ParameterRegistry::get(const std::string& name) {
  auto it = index_.find(name);
  SHARDLM_REQUIRE(it != index_.end(), ErrorKind::kInvalidArgument, "no parameter named " + name);
  return params_[it->second];
}

const Parameter& ParameterRegistry::get(const std::string& name) const {
  return const_cast<ParameterRegistry*>(this)->get(name);
}

void ParameterRegistry::zero_grads(DeviceContext& ctx) {
  if (total_ == 0) return;
  zero_buffer(ctx, grads_.view());
  if (compute_grads_.view().defined()) zero_buffer(ctx, compute_grads_.view());
  set_all_main_grads_empty(false);
}

}  // namespace shardlm::model
