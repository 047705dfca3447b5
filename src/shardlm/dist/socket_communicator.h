// SocketCommunicator: the CPU Communicator for ranks in different processes (one or several
// hosts), connected by TCP. `shardlm launch --device cpu` and `shardlm train` under torchrun /
// srun / mpirun on machines without GPUs use it; ThreadWorld stays the in-process backend of the
// tests. Same numeric semantics as ThreadWorld, bit for bit (see "Algorithms").
//
// Bootstrap: create_socket_world() is collective over world_size processes; they meet through a
// TcpStore (rank 0 serves it at MASTER_ADDR:MASTER_PORT) and build a full mesh of TCP
// connections (detail/socket_transport.h). Subgroups (split) reuse the world's connections:
// every frame carries its group id, so no new sockets or rendezvous are needed.
//
// Algorithms (direct exchange over the mesh; simple and exact, not bandwidth-optimal):
//  - all_reduce: element range [i·N/n, (i+1)·N/n) belongs to rank i. Every rank sends range i
//    of its input to rank i; rank i reduces its range over the inputs of ranks 0, 1, ..., n-1
//    in that order (detail::host_reduce, the thread backend's fold), then sends the result to
//    every rank (a reduce-scatter followed by an all-gather).
//  - reduce_scatter: block i of every rank's input goes to rank i, which folds them in rank
//    order. all_gather: every rank sends its input to every rank. broadcast: the root sends to
//    every rank. barrier: every rank sends an empty frame to every rank and waits for all.
//  - split: an all_gather of (color, key); members of a color are ordered by (key, rank).
//  - send/recv: a send is written to the socket when issued (the peer's reader thread buffers
//    it), a recv completes when the matching frame is there: the k-th send to a peer matches the
//    peer's k-th recv from this rank. Batched exchanges therefore never deadlock.
// Each element is reduced in rank order from the original inputs exactly as ThreadWorld does,
// so results are bit-identical to it for the same inputs (tested).
//
// Progress: collectives of a communicator run in issue order on its own worker thread (one per
// group and rank), so *_async calls return at once and communication overlaps the caller's
// compute; groups progress independently (as NCCL communicators on separate streams).
//
// Failures: every operation has a deadline (timeout(), set at issue). A peer whose process died
// (its connection closed without a goodbye), one that shut down, a group aborted by any member,
// or the deadline makes the operation throw Error(kTimeout) naming the group, the operation and
// its sequence number, this rank, and the ranks whose data did not arrive. A failed operation
// aborts the group on every member (they fail fast too); later operations throw at once.
// Mismatched calls (different op / dtype / size at the same position) throw kInvalidArgument.
// abort(reason) aborts the group on every member and makes this process's goodbye carry the
// reason, so peers waiting in other groups report why it left once it exits.
//
// Thread contract: as Communicator — one host thread per communicator object. Ownership: the
// communicators of one world share its connections (the last one destroyed closes them, after
// saying goodbye to every peer); the TcpStore is only needed during create_socket_world().
//
//   TcpStore store({.host = env.master_addr, .port = env.master_port, .is_server = env.rank == 0});
//   std::unique_ptr<Communicator> world =
//       create_socket_world(store, env.rank, env.world_size, {.timeout = 60s});
//   world->all_reduce(grads);
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "shardlm/dist/communicator.h"

namespace shardlm::dist {

class TcpStore;

struct SocketWorldOptions {
  std::chrono::milliseconds timeout = kDefaultCommTimeout;  // every operation's deadline
  std::string name = "world";  // world group's name (messages; also keys in the store)
  // Address the other ranks connect to; empty: the local address of the route to the store's
  // host (right for one host and for hosts on one network).
  std::string host;
};

// Collective over world_size processes (each calls it once with its rank); the rendezvous
// itself is bounded by options.timeout and names the ranks that never arrived.
std::unique_ptr<Communicator> create_socket_world(TcpStore& store, int rank, int world_size,
                                                  SocketWorldOptions options = {});

}  // namespace shardlm::dist
