// sorted_scatter_add.h — the embedding backwards' scatter-add of gradient rows into a table
// gradient, deterministic and summed in fp32 (embedding.cu, vocab_parallel_embedding.cu):
//
//   grad[tokens[n] - row_start, :] += rows[n, :]   for every n with the id in [row_start,
//                                                   row_start + R); other ids are skipped
//
// Summation order (fixed; the same inputs give the same bits on every call, whatever the grid):
// take a table row's k rows in row order (n ascending). If k <= kSortedScatterAddChunkRows (L),
// their fp32 sum in that order. Otherwise they are cut into chunks of L consecutive rows from
// the first (the last chunk holds the k mod L rest, when nonzero); each chunk is summed in fp32
// in row order from 0, and the chunk sums are added in fp32 in chunk order from 0. That sum is
// added to the table row once and rounded once to grad's dtype. So a token with more than L rows
// (end-of-document or padding ids) is NOT summed in plain row order: its sum is the chunked one
// above (which also rounds less: at most L + ceil(k/L) + 1 fp32 additions on any row's path,
// grad's included, instead of k + 1). Rows sharing a token are not added with atomics
// (nondeterministic order, and k roundings in bf16).
//
// Algorithm: keys[n] = tokens[n] - row_start (R when outside the shard), values[n] = n; a stable
// cub radix sort of (key, n) over the key's bits groups each token's rows, ascending: a token's
// rows are a segment of the sorted positions. Three kernels then run on the stream:
//  1. chunk sums: one block per L-tile [tL, tL + L) of sorted positions (and column tile). The
//     position tL lies in exactly one chunk; if that is a full chunk (L rows) of a segment longer
//     than L, the block sums it, one thread per column, into partials[t, :]. Each full chunk of a
//     long segment holds exactly one multiple of L, so each is summed once, in parallel.
//  2. short segments (<= L rows): blocks walk the sorted positions; at a segment start, warp
//     ballots over the next L keys find its end (or that it is longer: skipped) and each thread
//     sums one column, 8 loads in flight. This is the single-pass kernel of before, with no extra
//     load, at full occupancy (32 registers).
//  3. long segments (> L rows): blocks walk the L-tiles, not the positions; each long segment
//     holds a multiple of L, and the block of its first one finds the segment's start (a block
//     count over L keys), its end (binary search), adds its full chunks' partials in chunk order,
//     then sums the rest rows itself. With no long segment this is N/L cheap block steps.
//  Each grad element is written by one thread, once: no two blocks write one element.
// A batch of one repeated token (N rows) thus costs N/L parallel chunks of L rows, then N/L
// partial additions per column, instead of one N-long loop per column.
// Scratch (from the context's stream-ordered scratch, CudaBackendState::scratch, one call):
// sorted keys and positions (~16·N bytes), the sort's storage (cub's), and the chunk partials,
// sized for the worst case: ceil(N / L) · C floats (1/128 of bf16 rows' bytes; 512 KiB for
// N = 16384, C = 2048).
//
// Ownership: writes grad only; no allocation beyond growing the context's scratch.
#pragma once

#include <cstdint>

#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ops::cuda {

// L: the longest segment summed in one pass, and the chunk length of longer ones. 256 because
//  - real tokens of a batch rarely repeat more often (a 16K-token batch's frequent words are a
//    few hundred rows): they keep the single-pass path, which costs what it always did;
//  - a chunk is 32 rounds of 8 loads per thread, the same as the longest single-pass segment,
//    so no one loop is longer than that;
//  - N = 16384 rows of one token with C = 2048 make 64 chunks x 8 column tiles = 512 blocks of
//    256 threads: about 4 per SM on an H100/H200, enough loads in flight to stream the rows;
//  - the partials stay small (4·C·N/256 bytes) and a segment's combine adds only k/256 of them.
inline constexpr int64_t kSortedScatterAddChunkRows = 256;

// grad [R, C] in rows' dtype or fp32 (bf16/fp16 rows); rows with tokens.numel() * C elements;
// tokens int32, all on ctx's CUDA device. Throws kInvalidArgument naming `op` for another dtype
// pair or more than 2^31 - 1 rows.
void sorted_scatter_add(DeviceContext& ctx, Tensor grad, const Tensor& rows, const Tensor& tokens,
                        int64_t row_start, const char* op);

}  // namespace shardlm::ops::cuda
