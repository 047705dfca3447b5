#include "shardlm/model/tensor_parallel.h"

#include "shardlm/base/check.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {

namespace {

// Rows [begin, begin + count) of a row-major matrix view of width C.
Tensor row_block(const Tensor& t, int64_t begin, int64_t count, int64_t C) {
  return t.flat_view(begin * C, Shape({count, C}));
}

// Block copies between the rank-major order [tp, B, T/tp] of the collectives and the
// single-rank order [B, T] (see the header). to_single = true: rank-major -> [B, T].
void reorder(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows, Tensor dst,
             const Tensor& src, bool to_single) {
  const int64_t B = rows.batch, T = rows.seq, C = rows.hidden, P = tp.size(), Tl = T / P;
  for (int64_t r = 0; r < P; ++r) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t rank_major = (r * B + b) * Tl, single = b * T + r * Tl;
      const Tensor from = row_block(src, to_single ? rank_major : single, Tl, C);
      const Tensor to = row_block(dst, to_single ? single : rank_major, Tl, C);
      ops::copy(ctx, to, from);
    }
  }
}

void check_rows(const Tensor& t, int64_t n, int64_t C) {
  SHARDLM_CHECK(t.defined());
  SHARDLM_CHECK_EQ(t.numel(), n * C);
}

void all_gather_sequence(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                         Tensor full, const Tensor& local, const Tensor& staging) {
  const int64_t C = rows.hidden, N = rows.full();
  check_rows(full, N, C);
  check_rows(local, rows.local(tp), C);
  if (rows.batch == 1) {
    tp.group->all_gather(full, local);
    return;
  }
  check_rows(staging, N, C);
  tp.group->all_gather(staging.flat_view(0, full.shape()), local);
  reorder(ctx, tp, rows, full, staging, /*to_single=*/true);
}

void reduce_scatter_sequence(DeviceContext& ctx, const TensorParallel& tp,
                             const SequenceRows& rows, Tensor local, const Tensor& full,
                             const Tensor& staging) {
  const int64_t C = rows.hidden, N = rows.full();
  check_rows(full, N, C);
  check_rows(local, rows.local(tp), C);
  if (rows.batch == 1) {
    tp.group->reduce_scatter(local, full);
    return;
  }
  check_rows(staging, N, C);
  const Tensor staged = staging.flat_view(0, full.shape());
  reorder(ctx, tp, rows, staged, full, /*to_single=*/false);
  tp.group->reduce_scatter(local, staged);
}

// Plain TP works in place: the rank's rows ARE the full rows.
void require_alias(const Tensor& a, const Tensor& b) {
  SHARDLM_CHECK(a.raw() == b.raw() && a.numel() == b.numel());
}

}  // namespace

TensorParallel TensorParallel::of(const dist::RankContext& rc, bool sequence_parallel) {
  return TensorParallel{&rc.tp(), sequence_parallel};
}

void enter_column_region(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                         Tensor full, const Tensor& local, const Tensor& staging) {
  if (tp.sp()) return all_gather_sequence(ctx, tp, rows, full, local, staging);
  require_alias(full, local);
}

void enter_column_region_backward(DeviceContext& ctx, const TensorParallel& tp,
                                  const SequenceRows& rows, Tensor dlocal, const Tensor& dfull,
                                  const Tensor& staging) {
  if (tp.sp()) return reduce_scatter_sequence(ctx, tp, rows, dlocal, dfull, staging);
  require_alias(dlocal, dfull);
  if (tp.enabled()) tp.group->all_reduce(dlocal);
}

void exit_row_region(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                     Tensor local, const Tensor& partial, const Tensor& staging) {
  if (tp.sp()) return reduce_scatter_sequence(ctx, tp, rows, local, partial, staging);
  require_alias(local, partial);
  if (tp.enabled()) tp.group->all_reduce(local);
}

void exit_row_region_backward(DeviceContext& ctx, const TensorParallel& tp,
                              const SequenceRows& rows, Tensor dfull, const Tensor& dlocal,
                              const Tensor& staging) {
  if (tp.sp()) return all_gather_sequence(ctx, tp, rows, dfull, dlocal, staging);
  require_alias(dfull, dlocal);
}

int64_t first_position(const TensorParallel& tp, const SequenceRows& rows) {
  return tp.sp() ? tp.rank() * (rows.seq / tp.size()) : 0;
}

int64_t positions_per_rank(const TensorParallel& tp, const SequenceRows& rows) {
  return tp.sp() ? rows.seq / tp.size() : rows.seq;
}

namespace {
// Dropout key offset of a block: its first element in the single-rank [B, T_global, C] layout,
// so the masks match every other split.
uint64_t key_offset(const SequenceRows& rows, int64_t b, int64_t position) {
  return static_cast<uint64_t>((b * rows.global_seq() + position) * rows.hidden);
}
// The rank's rows are the whole micro-batch in single-rank order: one call covers them.
bool rows_are_single_rank_order(const TensorParallel& tp, const SequenceRows& rows) {
  return !tp.sp() && !rows.cp.enabled();
}
}  // namespace

void dropout_rows_forward(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                          Tensor out, const Tensor& in, double p, const DropoutKey& key) {
  if (rows_are_single_rank_order(tp, rows) || p == 0.0)
    return ops::dropout_forward(ctx, out, in, p, key, 0);
  const int64_t C = rows.hidden;
  for_each_position_block(tp, rows, [&](int64_t b, int64_t row, int64_t n, int64_t position) {
    ops::dropout_forward(ctx, row_block(out, row, n, C), row_block(in, row, n, C), p, key,
                         key_offset(rows, b, position));
  });
}

void dropout_add_rows_forward(DeviceContext& ctx, const TensorParallel& tp,
                              const SequenceRows& rows, Tensor out, const Tensor& in,
                              const Tensor& residual, double p, const DropoutKey& key) {
  if (rows_are_single_rank_order(tp, rows) || p == 0.0)
    return ops::dropout_add_forward(ctx, out, in, residual, p, key, 0);
  const int64_t C = rows.hidden;
  for_each_position_block(tp, rows, [&](int64_t b, int64_t row, int64_t n, int64_t position) {
    ops::dropout_add_forward(ctx, row_block(out, row, n, C), row_block(in, row, n, C),
                             row_block(residual, row, n, C), p, key,
                             key_offset(rows, b, position));
  });
}

void dropout_rows_backward(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                           Tensor din, const Tensor& dout, double p, const DropoutKey& key) {
  if (rows_are_single_rank_order(tp, rows) || p == 0.0)
    return ops::dropout_backward(ctx, din, dout, p, key, 0);
  const int64_t C = rows.hidden;
  for_each_position_block(tp, rows, [&](int64_t b, int64_t row, int64_t n, int64_t position) {
    ops::dropout_backward(ctx, row_block(din, row, n, C), row_block(dout, row, n, C), p, key,
                          key_offset(rows, b, position));
  });
}

}  // namespace shardlm::model
