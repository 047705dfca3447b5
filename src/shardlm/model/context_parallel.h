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
// all-gathers the sequence's fused QKV rows over the group (Megatron's --cp-comm-type
// all_gather) and runs each local chunk against the keys before it; its backward reduce-scatters
// the key/value gradients back to their owners (layers/transformer_layer.cc).
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

  // The CP group of `rc` (not owned: rc must outlive the model).
  static ContextParallel of(const dist::RankContext& rc);

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

}  // namespace shardlm::model
