#include "shardlm/cli/distributed_run.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <optional>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/dist/gpu_binding.h"
#include "shardlm/dist/host_staged_communicator.h"
#include "shardlm/dist/socket_communicator.h"
#include "shardlm/dist/tcp_store.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/device.h"
#include "shardlm/train/device_select.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/dist/nccl_communicator.h"
#endif

namespace shardlm::cli {

void run_on_world(train::TrainConfig cfg, const dist::LaunchEnv& env, const RankBody& body) {
  const bool log = env.rank == 0;
  // gloo: collectives go through host memory, so GPU ranks may share GPUs (round robin).
  const bool gloo = cfg.parallel.distributed_backend == "gloo";
  try {
    cfg.validate_parallel(env.world_size);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidConfig) throw;
    throw Error(ErrorKind::kInvalidConfig,
                std::string(e.what()) + " [the launch environment (" + env.source +
                    ") says world size " + std::to_string(env.world_size) +
                    ": start as many ranks as the parallel flags need, or change the flags]");
  }
  const std::chrono::milliseconds timeout = cfg.distributed_timeout();
  // Processes start at different times (slow file systems, busy hosts): the rendezvous waits at
  // least 2 minutes for them even when the operations' deadline is shorter.
  const std::chrono::milliseconds rendezvous_timeout =
      std::max<std::chrono::milliseconds>(timeout, std::chrono::minutes(2));

  dist::TcpStore store({.host = env.master_addr, .port = env.master_port,
                        .is_server = env.rank == 0, .timeout = rendezvous_timeout});
  // Which GPU (if any) each rank takes, agreed by all ranks (gpu_binding.h).
  const dist::GpuProposal proposal = dist::propose_gpu(env.local_rank, dist::host_name());
  const dist::RankDevice chosen = dist::decide_rank_device(
      cfg.device, env.rank, proposal,
      dist::exchange_gpu_proposals(store, env.rank, env.world_size, proposal,
                                   "--device " + cfg.device + " --distributed-backend " +
                                       cfg.parallel.distributed_backend,
                                   rendezvous_timeout),
      gloo);
  cfg.device = chosen.device;
  if (log && !chosen.note.empty()) std::cout << "device: " << chosen.note << "\n";
  const int gpu_index = chosen.gpu_index;
  auto device = std::make_unique<DeviceContext>(train::select_device(cfg.device, gpu_index));
  train::initialize_backend(*device);
  std::unique_ptr<dist::Communicator> world;
  std::string backend;
  if (device->device().is_cpu() || gloo) {
    dist::SocketWorldOptions options;
    options.timeout = rendezvous_timeout;
    world = dist::create_socket_world(store, env.rank, env.world_size, options);
    backend = "socket (CPU ranks over TCP)";
    if (!device->device().is_cpu()) {
      world = std::make_unique<dist::HostStagedCommunicator>(*device, std::move(world));
      backend = "gloo: socket, GPU tensors staged through host memory (GPU " +
                std::to_string(gpu_index) + ")";
    }
  } else {
#ifdef SHARDLM_WITH_CUDA
    dist::NcclOptions options;
    options.timeout = rendezvous_timeout;
    world = dist::NcclCommunicator::create_world(*device, store, env.rank, env.world_size, options);
    backend = "NCCL (GPU " + std::to_string(gpu_index) + ")";
#else
    throw Error(ErrorKind::kUnsupported, "this build has no CUDA backend; use --device cpu");
#endif
  }
  world->set_timeout(timeout);  // every operation from here on (subgroups inherit it)
  std::optional<dist::RankContext> rc;  // outlives the try block: the handler aborts its world
  try {
    // Sanity: everyone reached the same world, and collectives work.
    world->barrier();
    OwnedTensor ids = OwnedTensor::empty(DType::kI64, {1});
    OwnedTensor ids_dev = device->device().is_cpu()
                              ? OwnedTensor()
                              : OwnedTensor::empty(DType::kI64, {1}, device->device());
    ids.view().data<int64_t>()[0] = env.rank;
    Tensor t = ids.view();
    if (!device->device().is_cpu()) {  // the GPU communicators reduce device memory
      ops::copy(*device, ids_dev.view(), ids.view());
      t = ids_dev.view();
    }
    world->all_reduce(t);
    if (!device->device().is_cpu()) ops::copy(*device, ids.view(), ids_dev.view());
    const int64_t n = env.world_size;
    SHARDLM_REQUIRE(ids.view().data<int64_t>()[0] == n * (n - 1) / 2, ErrorKind::kInternal,
                    "distributed sanity check: the all-reduce of the rank ids gave " +
                        std::to_string(ids.view().data<int64_t>()[0]) + ", expected " +
                        std::to_string(n * (n - 1) / 2));
    if (log) {
      std::cout << "distributed: " << env.describe() << "; world of " << env.world_size
                << " ranks, communicator " << backend << ", timeout "
                << cfg.parallel.distributed_timeout_minutes << " min\n";
    }

    const dist::ParallelLayout layout =
        dist::ParallelLayout::create(env.world_size, cfg.parallel_sizes());
    rc.emplace(
        dist::RankContext::create(std::move(device), std::move(world), layout, env.local_rank));

    body(cfg, *rc);
    // Nobody leaves before everyone is done: rank 0 hosts the store that slower ranks still
    // read while they wait on their last operations.
    rc->world().barrier();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    const std::string reason = "rank " + std::to_string(env.rank) + " failed: " + what;
    // Abort every group (peers fail fast; NCCL communicators are aborted, not destroyed with
    // operations pending), the world last.
    if (rc) {
      for (dist::GroupKind kind : dist::kAllGroupKinds) {
        if (rc->has_group(kind)) rc->group(kind).abort(reason);
      }
    }
    if (rc)
      rc->world().abort(reason);
    else if (world)  // (RankContext::create aborts the world itself when it fails)
      world->abort(reason);
    const ErrorKind kind = [&] {
      if (auto* err = dynamic_cast<const Error*>(&e)) return err->kind();
      return ErrorKind::kInternal;
    }();
    throw Error(kind, "rank " + std::to_string(env.rank) + " of " +
                          std::to_string(env.world_size) + ": " + what);
  }
}

}  // namespace shardlm::cli
