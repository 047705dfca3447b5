#include "shardlm/model/context_parallel.h"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include "shardlm/base/check.h"
#include "shardlm/dist/all_to_all.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

ContextParallel ContextParallel::of(const dist::RankContext& rc, bool all_to_all) {
  return ContextParallel{&rc.group(dist::GroupKind::kCp), all_to_all};
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

namespace {

// The four permutations in all_to_all_index's buffer, M = B·T rows each (n = B·T/CP tokens of
// the rank, i = b·T/CP + t; rank-major row (r·B + b)·T/CP + t is rank r's token (b, t)):
//   kSplit   send row p·n + i      = local sub-row i·CP + p    (share p goes to rank p)
//   kOrder   heads row b·T + pos   = rank-major row of (b, pos)
//   kUnorder rank-major row        = heads row b·T + pos       (kOrder's inverse)
//   kJoin    local sub-row i·CP + p = recv row p·n + i         (kSplit's inverse)
// A local row [W] is CP sub-rows [W/CP], one per share, so local [B, T/CP, W] is [B·T, W/CP].
enum Permutation { kSplit = 0, kOrder = 1, kUnorder = 2, kJoin = 3 };

Tensor permutation(const AllToAllBuffers& buf, Permutation which, int64_t rows) {
  return buf.index.flat_view(which * rows, Shape({rows}));
}

// Rows M = B·T and share width W/CP of an exchange between local and heads.
std::pair<int64_t, int64_t> share_shape(const ContextParallel& cp, int64_t B, int64_t T,
                                        const Tensor& local, const Tensor& heads,
                                        const AllToAllBuffers& buf) {
  SHARDLM_CHECK(cp.enabled() && B > 0 && T > 0 && T % (2 * cp.size()) == 0);
  SHARDLM_CHECK(local.defined() && heads.defined() && local.numel() == heads.numel());
  const int64_t M = B * T;
  SHARDLM_CHECK(local.numel() % M == 0);  // W divisible by CP
  const int64_t share = local.numel() / M;
  SHARDLM_CHECK(buf.index.dtype() == DType::kI32 && buf.index.numel() == 4 * M);
  SHARDLM_CHECK(buf.send.numel() >= M * share && buf.recv.numel() >= M * share);
  return {M, share};
}

// The equal-block all-to-all: block p of send (M/CP rows) goes to rank p; block r of recv
// comes from rank r.
void exchange(DeviceContext& ctx, const ContextParallel& cp, const Tensor& recv,
              const Tensor& send) {
  const std::vector<int64_t> rows(static_cast<size_t>(cp.size()), send.size(0) / cp.size());
  dist::all_to_all_v(*cp.group, ctx, recv, send, rows, rows);
}

}  // namespace

void all_to_all_index(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                      const Tensor& index) {
  const int64_t P = cp.size(), M = batch * seq, n = M / P, TL = seq / P, c = TL / 2;
  SHARDLM_CHECK(cp.enabled() && seq % (2 * P) == 0 && index.numel() == 4 * M);
  SHARDLM_REQUIRE(M <= std::numeric_limits<int32_t>::max(), ErrorKind::kInvalidConfig,
                  "--cp-comm-type a2a: " + std::to_string(M) +
                      " tokens per micro-batch exceed the int32 row indices of its exchange; "
                      "use a smaller --micro-batch-size or --cp-comm-type all_gather");
  OwnedTensor host = OwnedTensor::empty(DType::kI32, {4 * M});
  int32_t* idx = host.view().data<int32_t>();
  auto at = [&](Permutation which, int64_t row) -> int32_t& { return idx[which * M + row]; };
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < n; ++i) {
      at(kSplit, p * n + i) = static_cast<int32_t>(i * P + p);
      at(kJoin, i * P + p) = static_cast<int32_t>(p * n + i);
    }
  for (int64_t r = 0; r < P; ++r)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < TL; ++t) {
        const int64_t pos = (t < c ? r * c : (2 * P - 1 - r) * c) + t % c;
        const int64_t rank_major = (r * batch + b) * TL + t, global = b * seq + pos;
        at(kUnorder, rank_major) = static_cast<int32_t>(global);
        at(kOrder, global) = static_cast<int32_t>(rank_major);
      }
  ops::copy(ctx, index, host.view());
}

namespace {
// M rows of W columns: in, gathered by `before` into the collective's blocks, exchanged, then
// gathered by `after` into out.
void permuted_exchange(DeviceContext& ctx, const ContextParallel& cp, int64_t M, int64_t W,
                       const Tensor& out, const Tensor& in, const AllToAllBuffers& buf,
                       Permutation before, Permutation after) {
  const Tensor send = buf.send.flat_view(0, Shape({M, W}));
  const Tensor recv = buf.recv.flat_view(0, Shape({M, W}));
  ops::gather_rows(ctx, send, in.flat_view(0, Shape({M, W})), permutation(buf, before, M),
                   Tensor());
  exchange(ctx, cp, recv, send);
  ops::gather_rows(ctx, out.flat_view(0, Shape({M, W})), recv, permutation(buf, after, M),
                   Tensor());
}
}  // namespace

void sequence_to_heads(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                       Tensor heads, const Tensor& local, const AllToAllBuffers& buf) {
  const auto [M, W] = share_shape(cp, batch, seq, local, heads, buf);
  permuted_exchange(ctx, cp, M, W, heads, local, buf, kSplit, kOrder);
}

void heads_to_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                       Tensor local, const Tensor& heads, const AllToAllBuffers& buf) {
  const auto [M, W] = share_shape(cp, batch, seq, local, heads, buf);
  permuted_exchange(ctx, cp, M, W, local, heads, buf, kUnorder, kJoin);
}

}  // namespace shardlm::model
