// QkvLayout: which rows of the fused QKV projection a tensor-parallel rank holds, and which
// ranks share its query group.
//
// The fused QKV weight [(NH + 2G)·HS, C] uses Megatron's grouped layout: per query group g the
// rows [q heads of g (NH/G·HS) | k_g (HS) | v_g (HS)]. Every rank runs attention on NH/TP heads:
//  - G >= TP (groups split): rank r holds the G/TP whole groups [r·G/TP, (r+1)·G/TP), one
//    contiguous block of rows (Split::along(0, r, TP)); nothing is shared.
//  - G < TP (groups replicated, as Megatron when there are fewer groups than ranks): the
//    R = TP/G consecutive ranks [g·R, (g+1)·R) share group g; rank r holds the q rows of its
//    heads [r·NH/TP, (r+1)·NH/TP) (a contiguous part of g's q rows) and a copy of k_g and v_g,
//    local rows [q (NH/TP·HS) | k_g | v_g]: attention sees ONE local query group. The first of
//    the R ranks owns k_g / v_g (checkpoints, grad norm: SplitSegment::replica on the others).
//    Each rank's k/v gradient comes from its own heads only, so the R partial gradients are
//    summed (ReplicatedKvGrads) before the gradient is reported ready.
//
// Thread contract: value type; the reduction runs on the rank's thread.
//
//   QkvLayout q = QkvLayout::of(cfg, tp.rank(), tp.size());
//   Linear qkv(prefix, C, cfg.qkv_size(), bias, init, tp, q.split);  // q.local_rows() rows
//   ops::AttentionShape shape{q.heads, q.groups, q.head_dim};
#pragma once

#include <cstdint>
#include <memory>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/parameter.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::model {

struct QkvLayout {
  int64_t heads = 0;       // NHL = NH/TP local query heads
  int64_t groups = 0;      // GL: local query groups (G/TP, or 1 when replicated)
  int64_t head_dim = 0;    // HS
  int64_t replicas = 1;    // R: ranks sharing each query group (1: groups split over TP)
  int64_t first_head = 0;  // global index of the first local head
  Split split;             // linear_qkv weight (rows) and bias; Split::none() at TP = 1

  // The layout of TP rank `tp_rank` of `tp_size` (validated by
  // TransformerConfig::validate_tensor_parallel).
  static QkvLayout of(const TransformerConfig& cfg, int tp_rank, int tp_size);
  int64_t local_rows() const { return (heads + 2 * groups) * head_dim; }  // QKVL
  bool replicated() const { return replicas > 1; }
  // Replicated: local rows [kv_row_begin(), local_rows()) are k_g then v_g.
  int64_t kv_row_begin() const { return heads * head_dim; }
};

// The ranks of a TP group that share this rank's query group (G < TP): collective over `tp`
// (every member calls it), ordered by TP rank. Returns nullptr when groups are not replicated.
std::unique_ptr<dist::Communicator> split_query_group_replicas(dist::Communicator& tp,
                                                               const QkvLayout& layout);

// Sums the k/v rows' gradients of linear_qkv (weight and bias) over the ranks sharing the
// query group, keeping the accumulation rule (grads +=): before the layer's QKV backward,
// begin() zeroes those rows on every replica but the first (which keeps the micro-batches
// accumulated so far, identical on all replicas); after it, finish() all-reduces them. Every
// replica then holds the same complete gradient. No-op unless the layout is replicated.
struct ReplicatedKvGrads {
  const QkvLayout* layout = nullptr;
  dist::Communicator* replicas = nullptr;
  Parameter* weight = nullptr;  // compute_grad [QKVL, C]
  Parameter* bias = nullptr;    // compute_grad [QKVL], or null
  void begin(DeviceContext& ctx) const;
  void finish(DeviceContext& ctx) const;
};

}  // namespace shardlm::model
