// gpu_binding.h — which GPU each rank of a multi-process job takes, agreed by all ranks through
// the rendezvous store before any communicator exists.
//
// Each rank proposes the visible GPU `local_rank % visible_gpus`. That is local_rank when every
// GPU of the node is visible (torchrun, `shardlm launch`, mpirun), and GPU 0 when the launcher
// binds one GPU per task (`srun --gpus-per-task=1`, `--gpu-bind`), where each rank sees one
// different device. The ranks then compare the proposals' device UUIDs through the store, so a
// GPU proposed by two ranks is found whichever way the GPUs were made visible (per-task binding
// works, but NCCL can only use NVLink between GPUs a process sees, so all-visible is better):
//   - NCCL needs one GPU per rank: --device cuda fails on every rank whose GPU is shared, naming
//     the ranks and the fixes; --device auto takes the GPUs only when no rank lacks one and none
//     is shared, else every rank runs on the CPU (all ranks see the same counts, so a job never
//     mixes CPU and GPU ranks);
//   - with ranks_may_share (--distributed-backend gloo), sharing is allowed.
//
// Thread contract: exchange_gpu_proposals is collective (every rank of the world calls it once
// with the same store namespace); decide_rank_device is a pure function.
//
//   GpuProposal mine = propose_gpu(env.local_rank, host_name());
//   GpuCensus census = exchange_gpu_proposals(store, env.rank, env.world_size, mine,
//                                             "--device auto --distributed-backend nccl", timeout);
//   RankDevice rd = decide_rank_device(cfg.device, env.rank, mine, census,
//                                      /*ranks_may_share=*/gloo);
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "shardlm/dist/tcp_store.h"

namespace shardlm::dist {

// The GPU one rank would take. index < 0: no GPU visible (or no CUDA backend).
struct GpuProposal {
  int local_rank = 0;
  std::string host;   // for messages
  int index = -1;     // visible device index
  int visible = 0;    // how many devices this rank sees
  std::string uuid;   // the device's identity ("GPU-…"), unique across hosts
  std::string describe(int rank) const;  // "rank 3 (local rank 3 on node1, GPU 3 of 8 visible)"
};

// This process's proposal: visible GPU local_rank % count, its UUID.
GpuProposal propose_gpu(int local_rank, const std::string& host);
// gethostname(), or "unknown-host".
std::string host_name();

// What every rank learned from the exchange.
struct GpuCensus {
  int ranks = 0;                // the world size
  std::string my_flags;         // this rank's device flags, as passed to the exchange
  int ranks_with_my_flags = 0;  // ranks passing the same flags (all of them, normally)
  std::string flags_of_rank_0;  // set when they differ
  int ranks_without_gpu = 0;    // whole world
  std::vector<std::string> without;  // the first few of them (described)
  int ranks_sharing_a_gpu = 0;  // whole world: ranks whose proposed GPU another rank proposed
  // One shared GPU and its proposers (described): this rank's own when it is shared, else the
  // first one found; empty when no GPU is shared.
  std::string shared_uuid;
  std::vector<std::string> sharers;
  bool own_gpu_shared = false;
};

// Collective over the store (keys "gpu-binding/…"): publishes `mine` and `flags` (the rank's
// --device and --distributed-backend, which must agree across ranks), waits for every rank, and
// returns the census; rank 0 (the store's server) returns only after every rank has read its
// census. Throws Error(kTimeout) naming missing ranks after `timeout`.
GpuCensus exchange_gpu_proposals(TcpStore& store, int rank, int world_size,
                                 const GpuProposal& mine, const std::string& flags,
                                 std::chrono::milliseconds timeout);

struct RankDevice {
  std::string device;  // "cpu" or "cuda"
  int gpu_index = 0;   // visible index when device == "cuda"
  std::string note;    // why --device auto chose the CPU although some rank sees a GPU
};

// requested: --device (auto | cpu | cuda). Every rank throws Error(kInvalidConfig) when the
// ranks passed different flags. For cuda, every rank throws Error(kInvalidConfig)
// when any rank has no GPU or (without ranks_may_share) any GPU is shared, so no rank goes on
// to wait for peers that failed; the message names the ranks and what to change. A rank that
// itself has no GPU gets {"cuda", 0} and select_device says why.
RankDevice decide_rank_device(const std::string& requested, int rank, const GpuProposal& mine,
                              const GpuCensus& census, bool ranks_may_share);

}  // namespace shardlm::dist
