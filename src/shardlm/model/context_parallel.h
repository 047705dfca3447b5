// ContextParallel: the context-parallel group a model runs in, and Megatron's load-balanced
// split of every sequence across it (--context-parallel-size, DESIGN §8).
//
// A sequence of T tokens is cut into 2·CP chunks of c = T/(2·CP) positions; CP rank r holds
// chunks r and 2·CP−1−r, in that order, as its local sequence of T/CP tokens. Causal attention
// costs more for later positions, so pairing an early chunk with a late one gives every rank
// the same work (Megatron's get_batch_on_this_cp_rank). Example, T = 8, CP = 2 (c = 2):
//   rank 0: positions 0 1 | 6 7        rank 1: positions 2 3 | 4 5
//
// Everything outside attention is per token, so it runs on the local sequence unchanged, with
// positions (RoPE, learned position embeddings, dropout keys) mapped to global ones. Attention
// (layers/transformer_layer.cc) sees the other ranks' tokens in one of two ways:
//  - --cp-comm-type all_gather (Megatron's default here): the sequence's fused QKV rows are
//    all-gathered over the group and each local chunk runs against the keys before it; backward
//    reduce-scatters the key/value gradients back to their owners.
//  - --cp-comm-type a2a (DeepSpeed-Ulysses, `all_to_all`): an all-to-all trades tokens for heads,
//    so each rank holds the WHOLE sequence for 1/CP of its query groups and runs plain causal
//    attention on it; a second all-to-all trades the output back (backward mirrors both). Needs
//    the rank's query groups divisible by CP.
//
// model/ talks only to dist::Communicator. Thread contract: one rank's thread.
#pragma once

#include <cstdint>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::dist {
class RankContext;
}

namespace shardlm::model {

struct ContextParallel {
  dist::Communicator* group = nullptr;  // the CP group (RankContext kCp); null: CP = 1
  // --cp-comm-type a2a: attention trades tokens for heads (above) instead of all-gathering.
  bool all_to_all = false;

  // The CP group of `rc` (not owned: rc must outlive the model).
  static ContextParallel of(const dist::RankContext& rc, bool all_to_all = false);

  int rank() const { return group ? group->rank() : 0; }
  int size() const { return group ? group->size() : 1; }
  bool enabled() const { return size() > 1; }

  // Tokens of each sequence this rank holds, of a global sequence of `seq` tokens.
  int64_t local_length(int64_t seq) const { return seq / size(); }
  // Positions per chunk, c = seq / (2·CP) (seq itself at CP = 1: one chunk).
  int64_t chunk_length(int64_t seq) const { return enabled() ? seq / (2 * size()) : seq; }
  // Local chunks: 2 under CP, 1 without.
  int num_chunks() const { return enabled() ? 2 : 1; }
  // Global position of the first token of local chunk k (0 or 1).
  int64_t chunk_position(int k, int64_t seq) const;
  // Global position of local position t.
  int64_t global_position(int64_t t, int64_t seq) const;
};

// A run of local positions whose global positions are consecutive: local positions
// [local, local + count) are global positions [global, global + count).
struct PositionRun {
  int64_t local = 0;
  int64_t count = 0;
  int64_t global = 0;
};
// The runs covering local positions [begin, begin + count) of a global sequence of `seq`
// tokens, in local order: one run without CP, at most two with it (the chunk boundary).
std::vector<PositionRun> position_runs(const ContextParallel& cp, int64_t seq, int64_t begin,
                                       int64_t count);

// Copies between the rank's local rows and whole sequences of `seq` tokens, rows of width W:
//   local [B, T/CP, W]  (this rank's two chunks per sequence)
//   full  [B, T, W]     (global position order)
//   staging [CP, B, T/CP, W]  the rank-major order the collectives move (B·T·W elements)
// gather_sequence: full = every rank's local rows (all-gather over the group, then reorder).
void gather_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                     Tensor full, const Tensor& local, const Tensor& staging);
// reduce_scatter_sequence: local = the rank's rows of the sum over ranks of `full` (reorder into
// staging, then reduce-scatter). full is left as it was.
void reduce_scatter_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch,
                             int64_t seq, Tensor local, const Tensor& full,
                             const Tensor& staging);

// The Ulysses exchange (--cp-comm-type a2a) of rows whose W columns split into CP equal shares
// (share p: columns [p·W/CP, (p+1)·W/CP), e.g. the fused-QKV or output columns of the p-th 1/CP
// of the rank's query groups, contiguous in Megatron's grouped layout):
//   local [B, T/CP, W]    this rank's tokens (two chunks per sequence), every share
//   heads [B, T, W/CP]    every token in global position order, share p = this rank
// Each direction is a row gather into the collective's rank-major blocks, one equal-block
// all-to-all (dist::all_to_all_v), and a row gather out of them; the gathers' int32 row
// permutations depend only on the sizes, so all_to_all_index builds them on the host and copies
// them into buf.index once per attention call. send and recv: flat staging of B·T·W/CP
// elements or more.
struct AllToAllBuffers {
  Tensor index;       // int32 [4·B·T], from all_to_all_index
  Tensor send, recv;  // >= B·T·W/CP elements each, the activations' dtype
};
void all_to_all_index(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                      const Tensor& index);
// heads = this rank's share of every rank's local rows. heads may be local's memory (local is
// read into send before heads is written).
void sequence_to_heads(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                       Tensor heads, const Tensor& local, const AllToAllBuffers& buf);
// local = every rank's share of this rank's tokens: the inverse of sequence_to_heads (no sum;
// same aliasing rule).
void heads_to_sequence(DeviceContext& ctx, const ContextParallel& cp, int64_t batch, int64_t seq,
                       Tensor local, const Tensor& heads, const AllToAllBuffers& buf);

}  // namespace shardlm::model
