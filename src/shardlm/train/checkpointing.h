// Checkpointing policy of a training run (Megatron's --save/--load family): what goes into a
// checkpoint, when to save, what to restore, and when to stop (signals, --exit-interval,
// --exit-duration-in-mins). The format and the atomic, resharding I/O are ckpt/'s.
//
// Contents: every parameter's fp32 master value ("model/<name>", a shard per rank from the
// registry's Split), the Adam moments ("optim/exp_avg/<name>", "optim/exp_avg_sq/<name>": the
// same regions, or flat ranges of them for a sharded optimizer) unless --no-save-optim, and the
// state: iteration, consumed samples, validation cursor, skipped/NaN iteration counts, the seed
// (the whole RNG state: init and dropout are Philox keyed by seed and iteration, so seed +
// iteration reproduce every stream), optimizer steps and hyper-parameters, LR schedule,
// loss scaler (scale and trackers; null without --fp16), the model config and the run's flags.
//
// Loading (--load DIR [--ckpt-step N]): the model flags must match the checkpoint's
// architecture (error naming the flag). --finetune loads the weights only and starts at
// iteration 0 with fresh optimizer state and the flags' seed; --no-load-optim / --no-load-rng
// skip those parts. Without a checkpoint in DIR training starts from scratch (as Megatron).
//
// Signals: --exit-signal-handler installs a SIGTERM/SIGINT handler that only sets a flag; the
// trainer checks it after each step, saves and stops (exit code 0). The flag is the one piece
// of process-global state in ShardLM: a POSIX signal handler can reach nothing else. It is a
// lock-free std::sig_atomic_t, read and cleared only through exit_signal_received() /
// TEST_raise_exit_signal().
//
// Thread contract: one Checkpointer per rank, used by the trainer's thread.
//
//   Checkpointer ckpt(cfg, log);                       // + world communicator when parallel
//   OptimizerStateView opt = optimizer_state(adam, reg);
//   if (ckpt.load(ctx, reg, &opt, progress)) adam.set_steps_taken(opt.steps);
//   loop { step(); if (ckpt.after_step(ctx, reg, &opt_now, progress)) return; }
//   ckpt.finish(ctx, reg, &opt_now, progress);          // final save, waits for async writes
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/ckpt/checkpoint_writer.h"
#include "shardlm/ckpt/sharded_tensor.h"
#include "shardlm/dist/communicator.h"
#include "shardlm/model/parameter.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/train/train_config.h"

namespace shardlm::train {

// The trainer's loop state that a checkpoint restores.
struct TrainingProgress {
  int64_t iteration = 0;
  int64_t consumed_samples = 0;
  int64_t eval_cursor = 0;
  int64_t skipped_iterations = 0;
  int64_t nan_iterations = 0;
  uint64_t seed = 0;
  // --fp16 dynamic loss scaler (optim::LossScalerState), when the run has one; load() sets
  // has_loss_scaler when the checkpoint holds one.
  bool has_loss_scaler = false;
  double loss_scale = 1.0;
  int64_t loss_scale_growth_tracker = 0;
  int64_t loss_scale_hysteresis_tracker = 0;
};

// An optimizer's checkpointed state, whichever optimizer it is: Adam moments `exp_avg` and
// `exp_avg_sq` hold the registry's flat elements owned[0], owned[1], ... concatenated; AdamW owns
// {{0, numel}} on every rank (replicated over data-parallel ranks), a distributed optimizer its
// own ranges (distinct per data-parallel rank).
struct OptimizerStateView {
  int64_t steps = 0;  // load() sets the checkpoint's count; the caller hands it to the optimizer
  std::vector<std::pair<int64_t, int64_t>> owned;
  Tensor exp_avg, exp_avg_sq;
  bool sharded_over_data_parallel = false;
  // The master weights when the optimizer holds them (a distributed optimizer under mixed
  // precision): laid out as the moments. Undefined: the registry's values are the weights.
  Tensor master;
};
OptimizerStateView optimizer_state(const optim::AdamW& adam, const model::ParameterRegistry& reg);

// Which copy of a replicated tensor this rank holds: only data-parallel rank 0 writes
// parameters (of an expert's parameter: expert-data-parallel rank 0), and of parameters not
// split across TP only TP rank 0.
struct ReplicaRanks {
  int data_parallel_rank = 0;
  int tensor_parallel_rank = 0;
  int expert_data_parallel_rank = 0;
  // This rank's copy of p is the data-parallel replica that writes it.
  bool writes(const model::Parameter& p) const {
    return (p.spec.expert ? expert_data_parallel_rank : data_parallel_rank) == 0;
  }
};

// Shards of every parameter's master value ("model/<name>"): from the registry, or from the
// optimizer's master shards when it holds them (optimizer->master defined).
std::vector<ckpt::ShardedTensor> parameter_shards(const model::ParameterRegistry& reg,
                                                  const ReplicaRanks& ranks = {},
                                                  const OptimizerStateView* optimizer = nullptr);
// Shards of optimizer moments `state` (one flat tensor), which holds the registry's flat
// elements owned[0], owned[1], ... concatenated ([begin, end) element ranges of the flat value
// buffer). AdamW: owned = {{0, reg.numel()}}; a distributed optimizer: its owned ranges. Gaps
// between parameters (bucket padding) are skipped. `write` is cleared for copies other ranks
// write: replicated k/v rows, the pipeline-tied embedding's copy, (tp rank != 0) parameters not
// split across TP, and, unless `sharded` (each rank owns distinct ranges), the copies of other
// data-parallel replicas (ReplicaRanks::writes).
std::vector<ckpt::ShardedTensor> moment_shards(const model::ParameterRegistry& reg,
                                               const std::vector<std::pair<int64_t, int64_t>>& owned,
                                               const Tensor& state, const std::string& prefix,
                                               bool sharded, const ReplicaRanks& ranks = {});

class Checkpointer {
 public:
  // comm: the world group (nullptr for one rank). Installs the signal handler when asked.
  Checkpointer(const TrainConfig& cfg, std::ostream& log, dist::Communicator* comm = nullptr,
               ReplicaRanks ranks = {});
  ~Checkpointer();

  // --load: fills the registry (and optimizer moments and steps, progress) from the checkpoint.
  // optimizer may be null (no optimizer state wanted). Returns false when
  // there is nothing to load (no --load, or no checkpoint in the directory yet).
  bool load(DeviceContext& ctx, model::ParameterRegistry& reg, OptimizerStateView* optimizer,
            TrainingProgress& progress);
  // Saves a checkpoint of the current state (async with --async-save).
  void save(DeviceContext& ctx, const model::ParameterRegistry& reg,
            const OptimizerStateView* optimizer, const TrainingProgress& progress);
  // After each iteration: saves on --save-interval; returns true when training must stop now
  // (exit signal, --exit-interval, --exit-duration-in-mins), after saving (if --save).
  bool after_step(DeviceContext& ctx, const model::ParameterRegistry& reg,
                  const OptimizerStateView* optimizer, const TrainingProgress& progress);
  // End of training: saves unless this iteration was just saved, then waits for pending writes.
  void finish(DeviceContext& ctx, const model::ParameterRegistry& reg,
              const OptimizerStateView* optimizer, const TrainingProgress& progress);

  // The state JSON a checkpoint of `progress` holds (exposed for tests and conversion).
  nlohmann::json state_json(const OptimizerStateView* optimizer, const TrainingProgress& progress) const;

 private:
  // Publishes a pending asynchronous save and logs how long its background write took.
  void finalize_pending();

  TrainConfig cfg_;
  std::ostream& log_;
  dist::Communicator* comm_;
  ReplicaRanks ranks_;
  ckpt::CheckpointWriter writer_;
  // The Hugging Face config.json of a converted checkpoint this run loaded (null otherwise),
  // written into every checkpoint it saves so `convert --to hf` after fine-tuning keeps the
  // source's keys (token ids, context length, dtype).
  nlohmann::json hf_config_;
  std::chrono::steady_clock::time_point start_;
  int64_t last_saved_iteration_ = -1;
};

// True once SIGTERM or SIGINT arrived while the --exit-signal-handler handler was installed.
bool exit_signal_received();
// Test seam: sets the flag as the handler would.
void TEST_raise_exit_signal();
void TEST_clear_exit_signal();

}  // namespace shardlm::train
