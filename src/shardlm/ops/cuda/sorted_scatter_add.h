// sorted_scatter_add.h — the embedding backwards' scatter-add of gradient rows into a table
// gradient, deterministic and summed in fp32 (embedding.cu, vocab_parallel_embedding.cu):
//
//   grad[tokens[n] - row_start, :] += rows[n, :]   for every n with the id in [row_start,
//                                                   row_start + R); other ids are skipped
//
// Every table row receives the fp32 sum of its rows in row order (n ascending), added once and
// rounded once to grad's dtype; the same inputs give the same bits on every call. Rows sharing
// a token are not added with atomics (nondeterministic order, and k roundings in bf16).
//
// Algorithm: keys[n] = tokens[n] - row_start (R when outside the shard), values[n] = n; a stable
// cub radix sort of (key, n) over the key's bits groups each token's rows, ascending. Then a grid
// of (position block x, column tile y) blocks walks the sorted positions grid-stride in x; at a
// segment start (first position or key change; R ends the walk) a block's warps find the
// segment's end with ballots, and each thread (one column of the tile) sums the segment's rows
// in order in fp32 (8 loads in flight) and writes grad[key, c] once: no two blocks write one
// element. A segment's loop is its length, so a batch of one repeated token is long but right.
// Scratch (sorted keys and positions, the sort's temporary storage: ~16·N bytes plus cub's) comes
// from the context's stream-ordered scratch (CudaBackendState::scratch).
//
// Ownership: writes grad only; no allocation beyond growing the context's scratch.
#pragma once

#include <cstdint>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops::cuda {

// grad [R, C] in rows' dtype or fp32 (bf16/fp16 rows); rows with tokens.numel() * C elements;
// tokens int32, all on ctx's CUDA device. Throws kInvalidArgument naming `op` for another dtype
// pair or more than 2^31 - 1 rows.
void sorted_scatter_add(DeviceContext& ctx, Tensor grad, const Tensor& rows, const Tensor& tokens,
                        int64_t row_start, const char* op);

}  // namespace shardlm::ops::cuda
