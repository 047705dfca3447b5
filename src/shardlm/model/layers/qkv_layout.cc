#include "shardlm/model/layers/qkv_layout.h"

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

namespace {
// The k/v rows [kv_row_begin, QKVL) of a [QKVL, ...] gradient: contiguous, at its end.
Tensor kv_rows(const QkvLayout& layout, const Tensor& grad) {
  const int64_t row = grad.numel() / layout.local_rows();
  const int64_t begin = layout.kv_row_begin() * row;
  return grad.flat_view(begin, Shape({grad.numel() - begin}));
}
}  // namespace

QkvLayout QkvLayout::of(const TransformerConfig& cfg, int tp_rank, int tp_size) {
  const int64_t NH = cfg.num_attention_heads, G = cfg.query_groups(), HS = cfg.head_dim();
  const int64_t P = tp_size;
  QkvLayout q;
  q.head_dim = HS;
  q.heads = NH / P;
  q.first_head = tp_rank * q.heads;
  if (P == 1) {
    q.groups = G;
    return q;
  }
  if (G >= P) {
    q.groups = G / P;
    q.split = Split::along(0, tp_rank, tp_size);
    return q;
  }
  SHARDLM_CHECK(P % G == 0 && NH % P == 0);
  q.groups = 1;
  q.replicas = P / G;
  const int64_t g = tp_rank / q.replicas, per_group = (NH / G + 2) * HS;
  const int64_t q_begin = g * per_group + (tp_rank % q.replicas) * q.heads * HS;
  const int64_t kv_begin = g * per_group + NH / G * HS;
  const bool replica = tp_rank % q.replicas != 0;
  q.split = Split::of_runs(0, tp_rank, tp_size,
                           {{q_begin, q.heads * HS, false}, {kv_begin, 2 * HS, replica}});
  return q;
}

std::unique_ptr<dist::Communicator> split_query_group_replicas(dist::Communicator& tp,
                                                               const QkvLayout& layout) {
  if (!layout.replicated()) return nullptr;
  const int group = tp.rank() / static_cast<int>(layout.replicas);
  return tp.split(group, tp.rank(), tp.name() + "-query-group");
}

void ReplicatedKvGrads::begin(DeviceContext& ctx) const {
  if (layout == nullptr || !layout->replicated()) return;
  SHARDLM_CHECK(replicas != nullptr && replicas->size() == layout->replicas);
  if (replicas->rank() == 0) return;
  ops::fill(ctx, kv_rows(*layout, weight->compute_grad), 0.0);
  if (bias) ops::fill(ctx, kv_rows(*layout, bias->compute_grad), 0.0);
}

void ReplicatedKvGrads::finish(DeviceContext& ctx) const {
  if (layout == nullptr || !layout->replicated()) return;
  (void)ctx;
  replicas->all_reduce(kv_rows(*layout, weight->compute_grad));
  if (bias) replicas->all_reduce(kv_rows(*layout, bias->compute_grad));
}

}  // namespace shardlm::model
