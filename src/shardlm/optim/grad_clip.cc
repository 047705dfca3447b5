#include "shardlm/optim/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "shardlm/ops/ops.h"

namespace shardlm::optim {

namespace {
// Removes p's replica ranges (Parameter::replica_ranges) from the last span, which ends with
// p's elements: the span splits at each (ranges are in local order). May leave empty spans.
void cut_replica_rows(const model::Parameter& p, std::vector<std::pair<int64_t, int64_t>>& spans) {
  for (const auto& [lo, hi] : p.replica_ranges()) {
    const int64_t end = spans.back().second;
    spans.back().second = p.offset + lo;
    spans.emplace_back(p.offset + hi, end);
  }
}
}  // namespace

double global_grad_norm(DeviceContext& ctx, const model::ParameterRegistry& reg,
                        const GradNormScope& scope) {
  // Counted parameters that are neighbours in the flat buffer form one span (only zero
  // padding can lie between them), so the norm takes a few large reductions, each one device
  // round trip, instead of one per parameter.
  std::vector<const model::Parameter*> by_offset;
  for (const model::Parameter& p : reg.parameters()) by_offset.push_back(&p);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const model::Parameter* a, const model::Parameter* b) { return a->offset < b->offset; });
  std::vector<std::pair<int64_t, int64_t>> spans;  // [begin, end) in the flat buffer
  bool previous_counted = false;
  for (const model::Parameter* p : by_offset) {
    // Replicated-over-TP parameters are identical on every TP rank: count them on rank 0. The
    // last pipeline stage's copy of the tied embedding is the first stage's parameter again.
    const bool counted =
        (p->spec.expert ? scope.count_expert : scope.count_dense) &&
        p->spec.pipeline_tie != model::PipelineTie::kCopy &&
        (p->spec.split.is_split() || (scope.tp_rank == 0 && p->spec.split.tp_rank == 0));
    const int64_t begin = p->offset, end = p->offset + p->local_shape.numel();
    if (counted && previous_counted)
      spans.back().second = end;
    else if (counted)
      spans.emplace_back(begin, end);
    previous_counted = counted;
    // Rows another TP rank also holds (replicated query groups) are counted there only.
    if (counted) cut_replica_rows(*p, spans);
  }
  std::erase_if(spans, [](const auto& s) { return s.first == s.second; });
  double sum = 0;
  for (const auto& [begin, end] : spans) {
    if (scope.owned.empty()) {
      sum += ops::sum_squares(ctx, reg.flat_grads().flat_view(begin, Shape({end - begin})));
      continue;
    }
    for (const BucketRange& r : scope.owned) {
      const int64_t lo = std::max(begin, r.begin), hi = std::min(end, r.end);
      if (lo < hi) sum += ops::sum_squares(ctx, reg.flat_grads().flat_view(lo, Shape({hi - lo})));
    }
  }
  if (scope.sum_group && scope.sum_group->size() > 1) {
    OwnedTensor host = OwnedTensor::empty(DType::kF64, {1});
    host.view().data<double>()[0] = sum;
    if (ctx.device().is_cpu()) {
      scope.sum_group->all_reduce(host.view());
    } else {  // NCCL reduces device memory
      OwnedTensor dev = OwnedTensor::empty(DType::kF64, {1}, ctx.device());
      ops::copy(ctx, dev.view(), host.view());
      scope.sum_group->all_reduce(dev.view());
      ops::copy(ctx, host.view(), dev.view());
    }
    sum = host.view().data<double>()[0];
  }
  return std::sqrt(sum);
}

GradClip grad_clip(DeviceContext& ctx, const model::ParameterRegistry& reg, double clip,
                   const GradNormScope& scope) {
  GradClip out;
  out.norm = global_grad_norm(ctx, reg, scope);
  if (clip > 0 && std::isfinite(out.norm)) out.coeff = std::min(1.0, clip / (out.norm + 1e-6));
  return out;
}

double clip_grad_norm(DeviceContext& ctx, model::ParameterRegistry& reg, double clip,
                      const GradNormScope& scope) {
  const GradClip c = grad_clip(ctx, reg, clip, scope);
  if (c.coeff < 1.0) ops::scale_inplace(ctx, reg.flat_grads(), c.coeff);
  return c.norm;
}

}  // namespace shardlm::optim
