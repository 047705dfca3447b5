// `shardlm train`: parse Megatron-style flags into a TrainConfig, find out which rank of which
// job this process is, then run the Trainer.
//
// Rank discovery (dist/launch_env.h): torchrun-style variables (also set by `shardlm launch`),
// then SLURM, then Open MPI; none of them means one rank. World size 1 runs the single-rank
// Trainer exactly as before. World size > 1:
//   1. the flags are checked against the world (TP x PP x CP must divide it, ...): a mismatch
//      between the environment and the flags is a kInvalidConfig naming both;
//   2. rank 0 serves a TcpStore at MASTER_ADDR:MASTER_PORT; every rank builds the world
//      communicator — the socket communicator on the CPU, NCCL on GPUs (GPU = LOCAL_RANK) —
//      with --distributed-timeout-minutes as every operation's deadline (fractions allowed;
//      the rendezvous itself waits at least 2 minutes for late processes);
//   3. a sanity collective (barrier, then an all-reduce of the rank ids) proves every rank
//      reached the same world;
//   4. RankContext::create with the layout from the flags, and the Trainer on it. Only world
//      rank 0 prints.
// A rank that fails aborts its world (peers fail fast, naming it) and exits with its error
// prefixed by "rank R of N".
//
// Test-only hooks (fault injection for tests/cli/launch_test.cc), read from the environment:
//   SHARDLM_TEST_KILL_RANK=r   rank r SIGKILLs itself when it starts iteration
//   SHARDLM_TEST_HANG_RANK=r   rank r stops responding (sleeps) when it starts iteration
//   SHARDLM_TEST_FAULT_AT_ITER=k  (1-based, default 1) — detected when the rank reads the first
//                              training sample of that iteration.
#include <CLI/CLI.hpp>
#include <signal.h>

#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/cli/train_flags.h"
#include "shardlm/dist/launch_env.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/dist/socket_communicator.h"
#include "shardlm/dist/tcp_store.h"
#include "shardlm/ops/ops.h"
#include "shardlm/train/device_select.h"
#include "shardlm/train/trainer.h"
#include "shardlm/train/training_data.h"

#ifdef SHARDLM_WITH_CUDA
#include "shardlm/dist/nccl_communicator.h"
#endif

namespace shardlm::cli {
namespace {

// Test-only: wraps the training data; on the chosen rank, reading the first sample of the chosen
// iteration kills the process (SIGKILL: no goodbye, as a crash) or hangs it forever.
class TEST_FaultInjectingSource final : public data::SampleSource {
 public:
  enum class Fault { kKill, kHang };
  TEST_FaultInjectingSource(std::unique_ptr<data::SampleSource> inner, Fault fault,
                            int64_t first_index)
      : inner_(std::move(inner)), fault_(fault), first_index_(first_index) {}
  int64_t size() const override { return inner_->size(); }
  int64_t seq_length() const override { return inner_->seq_length(); }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> mask) const override {
    if (index >= first_index_) {
      if (fault_ == Fault::kKill) ::raise(SIGKILL);
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    inner_->get(index, tokens, mask);
  }

 private:
  std::unique_ptr<data::SampleSource> inner_;
  Fault fault_;
  int64_t first_index_;
};

int env_int(const dist::EnvMap& env, const std::string& name, int fallback) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) return fallback;
  try {
    return std::stoi(it->second);
  } catch (const std::exception&) {
    throw Error(ErrorKind::kInvalidConfig, name + "='" + it->second + "' is not an integer");
  }
}

// --device for a rank of a multi-process job: auto takes GPUs only when every local rank gets
// one, so a job never mixes CPU and GPU ranks.
std::string resolve_device(const std::string& requested, const dist::LaunchEnv& env) {
  if (requested != "auto") return requested;
  const int needed = std::max(env.local_world_size, env.local_rank + 1);
  return cuda_backend_compiled() && cuda_device_count() >= needed ? "cuda" : "cpu";
}

void run_single(const train::TrainConfig& cfg) {
  train::Trainer trainer(cfg, std::cout);
  trainer.train();
}

void run_distributed(train::TrainConfig cfg, const dist::LaunchEnv& env,
                     const dist::EnvMap& vars) {
  const bool log = env.rank == 0;
  cfg.device = resolve_device(cfg.device, env);
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

  auto device = std::make_unique<DeviceContext>(train::select_device(cfg.device, env.local_rank));
  train::initialize_backend(*device);
  dist::TcpStore store({.host = env.master_addr, .port = env.master_port,
                        .is_server = env.rank == 0, .timeout = rendezvous_timeout});
  std::unique_ptr<dist::Communicator> world;
  std::string backend;
  if (device->device().is_cpu()) {
    dist::SocketWorldOptions options;
    options.timeout = rendezvous_timeout;
    world = dist::create_socket_world(store, env.rank, env.world_size, options);
    backend = "socket (CPU ranks over TCP)";
  } else {
#ifdef SHARDLM_WITH_CUDA
    dist::NcclOptions options;
    options.timeout = rendezvous_timeout;
    world = dist::NcclCommunicator::create_world(*device, store, env.rank, env.world_size, options);
    backend = "NCCL (GPU " + std::to_string(env.local_rank) + ")";
#else
    throw Error(ErrorKind::kUnsupported, "this build has no CUDA backend; use --device cpu");
#endif
  }
  world->set_timeout(timeout);  // every operation from here on (subgroups inherit it)
  dist::Communicator* world_comm = world.get();
  std::optional<dist::RankContext> rc;  // outlives the try block: the handler aborts its world
  try {
    // Sanity: everyone reached the same world, and collectives work.
    world_comm->barrier();
    OwnedTensor ids = OwnedTensor::empty(DType::kI64, {1});
    OwnedTensor ids_dev = device->device().is_cpu()
                              ? OwnedTensor()
                              : OwnedTensor::empty(DType::kI64, {1}, device->device());
    ids.view().data<int64_t>()[0] = env.rank;
    Tensor t = ids.view();
    if (!device->device().is_cpu()) {
      ops::copy(*device, ids.view(), ids_dev.view());
      t = ids_dev.view();
    }
    world_comm->all_reduce(t);
    if (!device->device().is_cpu()) ops::copy(*device, ids_dev.view(), ids.view());
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

    // Test-only fault injection (see the banner).
    std::unique_ptr<data::SampleSource> train_data, valid_data;
    const int kill_rank = env_int(vars, "SHARDLM_TEST_KILL_RANK", -1);
    const int hang_rank = env_int(vars, "SHARDLM_TEST_HANG_RANK", -1);
    if (kill_rank == env.rank || hang_rank == env.rank) {
      train::TrainConfig c = cfg;
      train::resolve_vocab_size(c);
      c.data_parallel_size = layout.dp();
      const int64_t gbs = c.micro_batch_size * c.num_microbatches() * c.data_parallel_size;
      const int64_t evals = c.train_iters / c.logging.eval_interval + 1;
      train::TrainingData d = train::build_training_data(c, c.train_iters * gbs,
                                                         evals * c.logging.eval_iters * gbs);
      const int64_t at_iter = env_int(vars, "SHARDLM_TEST_FAULT_AT_ITER", 1);
      train_data = std::make_unique<TEST_FaultInjectingSource>(
          std::move(d.train),
          kill_rank == env.rank ? TEST_FaultInjectingSource::Fault::kKill
                                : TEST_FaultInjectingSource::Fault::kHang,
          (at_iter - 1) * gbs);
      valid_data = std::move(d.valid);
    }

    train::Trainer trainer(cfg, *rc, std::cout, std::move(train_data), std::move(valid_data));
    trainer.train();
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
    world_comm->abort(reason);
    const ErrorKind kind = [&] {
      if (auto* err = dynamic_cast<const Error*>(&e)) return err->kind();
      return ErrorKind::kInternal;
    }();
    throw Error(kind, "rank " + std::to_string(env.rank) + " of " +
                          std::to_string(env.world_size) + ": " + what);
  }
}

}  // namespace

void register_train(CLI::App& app) {
  auto cfg = std::make_shared<train::TrainConfig>();
  CLI::App* cmd = app.add_subcommand("train", "Train a GPT model (Megatron-LM flag names)");
  add_train_flags(*cmd, *cfg);
  cmd->callback([cfg] {
    const dist::EnvMap vars = dist::read_process_environment();
    const dist::LaunchEnv env = dist::discover_launch_env(vars);
    if (env.world_size == 1) {
      run_single(*cfg);
    } else {
      run_distributed(*cfg, env, vars);
    }
  });
}

}  // namespace shardlm::cli
