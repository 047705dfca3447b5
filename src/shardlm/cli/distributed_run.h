// Running one rank of a multi-process job (the steps shared by `shardlm train` and `shardlm
// bench`): check the parallel flags against the launch environment's world, rendezvous through
// a TcpStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it), agree on the ranks' devices through
// it (dist/gpu_binding.h: visible GPU LOCAL_RANK % count, one per rank unless gloo), build the
// world communicator (socket on the CPU, NCCL on GPUs, gloo: socket with staged GPU tensors) with
// --distributed-timeout-minutes as every operation's deadline (the rendezvous waits at least 2
// minutes), prove it with a sanity collective, create the RankContext from the flags' layout and
// run `body` on it. A body that throws aborts every group and the world (peers fail fast, naming
// this rank) and the error is rethrown prefixed "rank R of N".
//
//   run_on_world(cfg, env, [&](const train::TrainConfig& c, dist::RankContext& rc) {
//     train::Trainer(c, rc, std::cout).train();
//   });
#pragma once

#include <functional>
#include <string>

#include "shardlm/dist/launch_env.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/train/train_config.h"

namespace shardlm::cli {

// cfg as resolved for this rank (its --device), and the rank's context.
using RankBody = std::function<void(const train::TrainConfig& cfg, dist::RankContext& rank)>;

void run_on_world(train::TrainConfig cfg, const dist::LaunchEnv& env, const RankBody& body);

}  // namespace shardlm::cli
