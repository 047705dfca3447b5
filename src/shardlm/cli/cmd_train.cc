// `shardlm train`: parse Megatron-style flags into a TrainConfig, find out which rank of which
// job this process is, then run the Trainer.
//
// Rank discovery (dist/launch_env.h): torchrun-style variables (also set by `shardlm launch`),
// then SLURM, then Open MPI; none of them means one rank. World size 1 runs the single-rank
// Trainer. World size > 1 runs it on this rank of the world (cli/distributed_run.h: flags checked
// against the world, rendezvous, communicators, sanity collective; a failing rank aborts its
// world and exits with its error prefixed by "rank R of N"). Only world rank 0 prints.
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
#include <thread>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/cli/distributed_run.h"
#include "shardlm/cli/train_flags.h"
#include "shardlm/dist/launch_env.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/train/trainer.h"
#include "shardlm/train/training_data.h"


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

void run_single(const train::TrainConfig& cfg) {
  train::Trainer trainer(cfg, std::cout);
  trainer.train();
}

void run_distributed(const train::TrainConfig& cfg, const dist::LaunchEnv& env,
                     const dist::EnvMap& vars) {
  run_on_world(cfg, env, [&](const train::TrainConfig& c, dist::RankContext& rc) {
    const dist::ParallelLayout& layout = rc.layout();
    // Test-only fault injection (see the banner).
    std::unique_ptr<data::SampleSource> train_data, valid_data;
    const int kill_rank = env_int(vars, "SHARDLM_TEST_KILL_RANK", -1);
    const int hang_rank = env_int(vars, "SHARDLM_TEST_HANG_RANK", -1);
    if (kill_rank == env.rank || hang_rank == env.rank) {
      train::TrainConfig dc = c;
      train::resolve_vocab_size(dc);
      dc.data_parallel_size = layout.dp();
      const int64_t gbs = dc.micro_batch_size * dc.num_microbatches() * dc.data_parallel_size;
      const int64_t evals = dc.train_iters / dc.logging.eval_interval + 1;
      train::TrainingData d = train::build_training_data(dc, dc.train_iters * gbs,
                                                         evals * dc.logging.eval_iters * gbs);
      const int64_t at_iter = env_int(vars, "SHARDLM_TEST_FAULT_AT_ITER", 1);
      train_data = std::make_unique<TEST_FaultInjectingSource>(
          std::move(d.train),
          kill_rank == env.rank ? TEST_FaultInjectingSource::Fault::kKill
                                : TEST_FaultInjectingSource::Fault::kHang,
          (at_iter - 1) * gbs);
      valid_data = std::move(d.valid);
    }

    train::Trainer trainer(c, rc, std::cout, std::move(train_data), std::move(valid_data));
    trainer.train();
  });
}

}  // namespace

void register_train(CLI::App& app) {
  auto cfg = std::make_shared<train::TrainConfig>();
  CLI::App* cmd = app.add_subcommand("train", "Train a GPT, BERT or T5 model (Megatron-LM flag names)");
  add_train_flags(*cmd, *cfg);
  cmd->callback([cmd, cfg] {
    const dist::EnvMap vars = dist::read_process_environment();
    const dist::LaunchEnv env = dist::discover_launch_env(vars);
    if (env.rank == 0) note_ignored_flags(*cmd, *cfg, std::cerr);
    if (env.world_size == 1) {
      run_single(*cfg);
    } else {
      run_distributed(*cfg, env, vars);
    }
  });
}

}  // namespace shardlm::cli
