// All-to-all with variable row counts: the exchange of expert parallelism (MoE token dispatch
// and combine, Megatron's alltoall token dispatcher) and of Ulysses-style context parallelism.
// Free functions over the Communicator interface, so every backend (threads, sockets, NCCL,
// host-staged) has it; the peers' blocks travel in ONE batch_send_recv_async (an NCCL group on
// GPUs), every send and receive posted at once, so no ordering of the ranks can deadlock.
//
// Layout: rank r's `in` holds the rows it sends, grouped by destination in rank order (the first
// send_rows[0] rows go to rank 0, the next send_rows[1] to rank 1, ...); its `out` receives
// rank 0's block first, then rank 1's, ... (recv_rows[p] rows from rank p). Rows may have any
// trailing shape and dtype (bytes are moved, never converted). The block a rank sends itself is
// copied locally with ops::copy on the DeviceContext (send_rows[me] == recv_rows[me]); a
// zero-row block posts no message at all.
//
// Consistent counts: rank p's send_rows[q] must equal rank q's recv_rows[p]. That cannot be
// checked locally; all_to_all_counts() is how to get recv_rows that match (the transpose of the
// ranks' send counts, one all_gather). Inconsistent counts are the caller's error; the CPU
// backends catch them without writing past `out`: a send and its receive of different sizes
// throw Error(kInvalidArgument) ("mismatch") at the receiver (the thread backend: at both
// ranks); a receive whose sender posts nothing (its count is zero) ends in the communicator's
// Error(kTimeout) naming the missing rank. NCCL does not compare sizes: there inconsistent
// counts are undefined (at best a hang that the deadline ends with kTimeout).
//
// Synchronisation: as every *_async operation, `in` must stay unmodified and `out` unread until
// the handle's wait() returned (the block to itself is copied by the call, on ctx's stream).
// Thread contract: called by the communicator's rank thread, as any operation of it.
//
//   std::vector<int64_t> send_rows = tokens_per_rank(routing);        // [ep.size()]
//   std::vector<int64_t> recv_rows = all_to_all_counts(ep, ctx, send_rows);
//   CommHandle h = all_to_all_v_async(ep, ctx, received, permuted, send_rows, recv_rows);
//   ... work that touches neither buffer ...
//   h.wait();                                                           // received is valid
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist {

// recv_counts[p] = send_counts[me] of rank p, i.e. what rank p sends this rank. Collective over
// comm (every member calls it); send_counts.size() == comm.size(), every count >= 0. Blocking.
// With a CUDA ctx the counts travel through device memory (NCCL reduces device buffers only).
std::vector<int64_t> all_to_all_counts(Communicator& comm, DeviceContext& ctx,
                                       std::span<const int64_t> send_counts);

// out [sum(recv_rows), ...] = the blocks of in [sum(send_rows), ...] the ranks send this rank, in
// rank order (see the banner). in and out: same dtype and trailing shape, on ctx's device, not
// overlapping. Throws Error(kInvalidArgument) naming the function, group, rank and numbers for
// wrong span sizes, negative counts, row sums that differ from the tensors' first dims, a dtype
// or trailing-shape mismatch, or send_rows[me] != recv_rows[me].
CommHandle all_to_all_v_async(Communicator& comm, DeviceContext& ctx, Tensor out,
                              const Tensor& in, std::span<const int64_t> send_rows,
                              std::span<const int64_t> recv_rows);

// Blocking form: all_to_all_v_async(...).wait().
void all_to_all_v(Communicator& comm, DeviceContext& ctx, Tensor out, const Tensor& in,
                  std::span<const int64_t> send_rows, std::span<const int64_t> recv_rows);

}  // namespace shardlm::dist
