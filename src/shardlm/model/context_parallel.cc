#include "shardlm/model/context_parallel.h"

#include <algorithm>

#include "shardlm/base/check.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

ContextParallel ContextParallel::of(const dist::RankContext& rc) {
  return ContextParallel{&rc.group(dist::GroupKind::kCp)};
}

int64_t ContextParallel::chunk_position(int k, int64_t seq) const {
  SHARDLM_CHECK(k >= 0 && k < num_chunks());
  const int64_t c = chunk_length(seq);
  return k == 0 ? rank() * c : (2 * size() - 1 - rank()) * c;
}

int64_t ContextParallel::global_position(int64_t t, int64_t seq) const {
  const int64_t c = chunk_length(seq);
  const int k = static_cast<int>(t / c);
  return chunk_position(k, seq) + t % c;
}

std::vector<PositionRun> position_runs(const ContextParallel& cp, int64_t seq, int64_t begin,
                                       int64_t count) {
  SHARDLM_CHECK(begin >= 0 && count >= 0 && begin + count <= cp.local_length(seq));
  std::vector<PositionRun> runs;
  const int64_t c = cp.chunk_length(seq);
  for (int64_t t = begin; t < begin + count;) {
    const int64_t chunk_end = (t / c + 1) * c;
    const int64_t n = std::min(begin + count, chunk_end) - t;
    runs.push_back({t, n, cp.global_position(t, seq)});
    t += n;
  }
  return runs;
}

namespace {

// Block copies between the rank-major order [CP, B, T/CP, W] of the collectives and global
// position order [B, T, W]: rank r's chunk k of sequence b is c rows in each.
void reorder(DeviceContext& ctx, const ContextParallel& cp, int64_t B, int64_t T, int64_t W,
             Tensor dst, const Tensor& src, bool to_global) {
  const int64_t P = cp.size(), TL = T / P, c = TL / 2;
  for (int64_t r = 0; r < P; ++r) {
    for (int64_t b = 0; b < B; ++b) {
      for (int k = 0; k < 2; ++k) {
        const int64_t position = k == 0 ? r * c : (2 * P - 1 - r) * c;
        const int64_t rank_major = ((r * B + b) * TL + k * c) * W, global = (b * T + position) * W;
        const Tensor from = src.flat_view(to_global ? rank_major : global, Shape({c, W}));
        const Tensor to = dst.flat_view(to_global ? global : rank_major, Shape({c, W}));
        ops::copy(ctx, to, from);
      }
    }
  }
}

// Row width W of a full [B, T, W] tensor, checking the sizes fit.
int64_t row_width(const ContextParallel& cp, int64_t B, int64_t T, const Tensor& full,
                  const Tensor& local, const Tensor& staging) {
  SHARDLM_CHECK(cp.enabled() && B > 0 && T > 0 && T % (2 * cp.size()) == 0);
  SHARDLM_CHECK(full.defined() && local.defined() && staging.defined());
  SHARDLM_CHECK(full.numel() % (B * T) == 0 && full.numel() == local.numel() * cp.size());
  SHARDLM_CHECK(staging.numel() >= full.numel());
  return full.numel() / (B * T);
}

}  // namespace

void gather_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                     Tensor full, const Tensor& local, const Tensor& staging) {
  const int64_t W = row_width(cp, batch, seq, full, local, staging);
  const Tensor staged = staging.flat_view(0, Shape({full.numel()}));
  cp.group->all_gather(staged, local.flat_view(0, Shape({local.numel()})));
  reorder(ctx, cp, batch, seq, W, full, staged, /*to_global=*/true);
}

void reduce_scatter_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch,
                             int64_t seq, Tensor local, const Tensor& full,
                             const Tensor& staging) {
  const int64_t W = row_width(cp, batch, seq, full, local, staging);
  const Tensor staged = staging.flat_view(0, Shape({full.numel()}));
  reorder(ctx, cp, batch, seq, W, staged, full, /*to_global=*/false);
  cp.group->reduce_scatter(local.flat_view(0, Shape({local.numel()})), staged);
}

}  // namespace shardlm::model
