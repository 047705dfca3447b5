// TensorParallel: the tensor-parallel group a model shard runs in, and the paired communication
// at the boundaries of its parallel regions (DESIGN §8.8, Megatron's tensor_parallel/mappings.py).
//
// A column-parallel linear (QKV, fc1, output layer) needs its full input on every TP rank and
// produces a slice of the output features; a row-parallel linear (proj, fc2) takes a slice of
// the input features and produces a partial sum of the full output. Between the regions the
// residual stream is either replicated over TP (plain TP) or sharded along the sequence
// (--sequence-parallel):
//
//   region boundary          plain TP                    sequence parallel
//   enter column region      fwd identity, bwd all-reduce fwd all-gather,  bwd reduce-scatter
//   exit row region          fwd all-reduce, bwd identity fwd reduce-scatter, bwd all-gather
//
// Row order (the activations are [B*T, C] row-major, b-major). Inside the parallel regions rows
// are in the single-rank order [B, T], so attention, embedding and the loss see exactly the TP=1
// layout. A sequence-parallel shard on TP rank r holds rows (b, t) with t in
// [r*T/tp, (r+1)*T/tp), in order [B, T/tp]. The collectives move rank-major blocks
// [tp, B, T/tp]; with B > 1 the gather / scatter reorder through a staging buffer of [B*T, C]
// (tp*B block copies); with B == 1 (the usual large-model micro-batch) they work in place.
// The single-rank path never calls any of this.
//
// model/ talks only to dist::Communicator, never to NCCL. Thread contract: one rank's thread.
//
//   TensorParallel tp = TensorParallel::of(rank_context, /*sequence_parallel=*/true);
//   GPTModel model(cfg, tp);
#pragma once

#include <cstdint>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/context_parallel.h"
#include "shardlm/model/parameter.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/philox.h"

namespace shardlm::dist {
class RankContext;
}

namespace shardlm::model {

struct TensorParallel {
  dist::Communicator* group = nullptr;  // the TP group (RankContext::tp()); null: TP = 1
  bool sequence_parallel = false;       // --sequence-parallel (ignored at TP = 1, as Megatron)
  // Fewer query groups than TP ranks: the ranks of `group` that share this rank's query group
  // (model/layers/qkv_layout.h); GPTModel creates and owns it. Null otherwise.
  dist::Communicator* query_group = nullptr;

  // The TP group of `rc` (not owned: rc must outlive the model).
  static TensorParallel of(const dist::RankContext& rc, bool sequence_parallel);

  int rank() const { return group ? group->rank() : 0; }
  int size() const { return group ? group->size() : 1; }
  bool enabled() const { return size() > 1; }
  bool sp() const { return sequence_parallel && enabled(); }
  // A split of `dim` across this group (Split::none() at TP = 1).
  Split split(int dim, int chunks = 1) const {
    return enabled() ? Split::along(dim, rank(), size(), chunks) : Split::none();
  }
};

// Rows of the sequence-parallel layout of a micro-batch: B sequences of T tokens. Under context
// parallelism T is the rank's local sequence (T_global / CP) and `cp` maps its positions to
// global ones, which key the dropout masks (so masks do not depend on the split).
struct SequenceRows {
  int64_t batch = 0;    // B
  int64_t seq = 0;      // T (local under CP)
  int64_t hidden = 0;   // C (row width of the residual stream)
  ContextParallel cp{};
  int64_t full() const { return batch * seq; }
  int64_t global_seq() const { return seq * cp.size(); }
  // Rows held by one rank between parallel regions.
  int64_t local(const TensorParallel& tp) const { return tp.sp() ? full() / tp.size() : full(); }
};

// ---- region boundaries ------------------------------------------------------------------------
// `staging` is [B*T, C] scratch, needed only under sequence parallelism with B > 1 (undefined
// otherwise). Every function is a no-op at TP = 1 beyond what its comment says.

// Enter a column-parallel region, forward: full[B*T, C] from the rank's rows. Plain TP: `full`
// must alias `local` (nothing to do). SP: all-gather.
void enter_column_region(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                         Tensor full, const Tensor& local, const Tensor& staging);
// Backward of the above: the rank's input gradient from the partial input gradient `dfull`
// (each rank's column slice contributes a partial sum). Plain TP: all-reduce in place
// (dlocal aliases dfull). SP: reduce-scatter. `dfull` may be overwritten.
void enter_column_region_backward(DeviceContext& ctx, const TensorParallel& tp,
                                  const SequenceRows& rows, Tensor dlocal, const Tensor& dfull,
                                  const Tensor& staging);
// Exit a row-parallel region, forward: sum the ranks' partial outputs `partial[B*T, C]` into
// the rank's rows. Plain TP: all-reduce in place (local aliases partial). SP: reduce-scatter.
void exit_row_region(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                     Tensor local, const Tensor& partial, const Tensor& staging);
// Backward of the above: the full output gradient from the rank's rows. Plain TP: `dfull`
// aliases `dlocal`. SP: all-gather.
void exit_row_region_backward(DeviceContext& ctx, const TensorParallel& tp,
                              const SequenceRows& rows, Tensor dfull, const Tensor& dlocal,
                              const Tensor& staging);

// ---- row-wise work on the rank's rows ---------------------------------------------------------
// Dropout over the rank's rows with masks keyed by the GLOBAL element position (b*T + t)*C + c,
// so sequence-parallel masks equal the single-rank masks. Forward and backward.
void dropout_rows_forward(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                          Tensor out, const Tensor& in, double p, const DropoutKey& key);
void dropout_rows_backward(DeviceContext& ctx, const TensorParallel& tp, const SequenceRows& rows,
                           Tensor din, const Tensor& dout, double p, const DropoutKey& key);
// out = residual + dropout(in) in one pass (ops::dropout_add_forward), same masks as
// dropout_rows_forward. Its backward is dropout_rows_backward (the residual's gradient is dout).
void dropout_add_rows_forward(DeviceContext& ctx, const TensorParallel& tp,
                              const SequenceRows& rows, Tensor out, const Tensor& in,
                              const Tensor& residual, double p, const DropoutKey& key);
// First sequence position of the rank's rows (0 without SP) and their count per sequence.
int64_t first_position(const TensorParallel& tp, const SequenceRows& rows);
int64_t positions_per_rank(const TensorParallel& tp, const SequenceRows& rows);
// Calls f(b, row, count, position) for each block of the rank's rows whose global positions are
// consecutive: rows [row, row + count) of the rank's [NL, C] rows are sequence b's global
// positions [position, position + count). One block per sequence, two under context
// parallelism when the rank's positions cross its chunk boundary.
template <typename F>
void for_each_position_block(const TensorParallel& tp, const SequenceRows& rows, F&& f) {
  const int64_t Tl = positions_per_rank(tp, rows), t0 = first_position(tp, rows);
  const std::vector<PositionRun> runs = position_runs(rows.cp, rows.global_seq(), t0, Tl);
  for (int64_t b = 0; b < rows.batch; ++b)
    for (const PositionRun& run : runs) f(b, b * Tl + run.local - t0, run.count, run.global);
}

}  // namespace shardlm::model
