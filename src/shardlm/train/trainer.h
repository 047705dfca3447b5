// Trainer: wires config → model → optimizer → data → training loop (DESIGN §1: train/ is the
// only layer that wires everything together).
//
// One iteration = num_microbatches forward/backward passes accumulating gradients into the flat
// gradient buffer, then global-norm clipping, then one AdamW step with the scheduled LR.
// Logs a Megatron-style line every --log-interval iterations and a validation loss every
// --eval-interval (and at the end). A step whose gradient norm is not finite is skipped
// (parameters untouched) and counted.
//
//   Trainer trainer(cfg, std::cout);
//   trainer.train();
//   trainer.history();   // per-iteration loss, lr, grad norm (tests, determinism checks)
#pragma once

#include <iosfwd>
#include <memory>
#include <span>
#include <vector>

#include "shardlm/data/sample_source.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/model/parameter.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/optim/lr_schedule.h"
#include "shardlm/tensor/arena.h"
#include "shardlm/train/memory_plan.h"
#include "shardlm/train/train_config.h"

namespace shardlm::train {

struct IterationRecord {
  int64_t iteration = 0;
  double loss = 0;       // mean over micro-batches
  double lr = 0;         // lr used for this iteration's update
  double grad_norm = 0;  // before clipping
  bool skipped = false;
};

struct EvalRecord {
  int64_t iteration = 0;
  double loss = 0;
};

class Trainer {
 public:
  // Sources may be injected (tests); otherwise they are built from cfg.data.
  Trainer(const TrainConfig& cfg, std::ostream& log,
          std::unique_ptr<data::SampleSource> train_data = nullptr,
          std::unique_ptr<data::SampleSource> valid_data = nullptr);
  ~Trainer();

  void train();
  // Runs one iteration (all micro-batches + optimizer step) and returns its record.
  IterationRecord train_step();
  double evaluate();

  const std::vector<IterationRecord>& history() const { return history_; }
  const std::vector<EvalRecord>& evaluations() const { return evals_; }
  model::ParameterRegistry& parameters() { return registry_; }
  DeviceContext& device() { return *device_; }
  const TrainConfig& config() const { return cfg_; }
  const MemoryPlan& memory_plan() const { return memory_plan_; }
  // Device memory in use (cudaMemGetInfo; host RAM in use on the CPU) before the model was
  // allocated; now-minus-this is what the run allocated.
  size_t device_bytes_at_start() const { return device_bytes_at_start_; }
  int64_t iteration() const { return iteration_; }

 private:
  void build_data();
  // Samples first_sample, first_sample + 1, ... (validation), or the given global indices.
  model::Batch load_batch(const data::SampleSource& source, int64_t first_sample);
  model::Batch load_batch(const data::SampleSource& source,
                          std::span<const int64_t> sample_indices);
  void log_interval_line(double elapsed_s);

  TrainConfig cfg_;
  std::ostream& log_;
  std::unique_ptr<DeviceContext> device_;
  DType dtype_;
  model::ParameterRegistry registry_;
  std::unique_ptr<model::GPTModel> model_;
  Arena activations_;
  std::unique_ptr<optim::AdamW> optimizer_;
  std::unique_ptr<optim::LearningRateSchedule> schedule_;
  std::unique_ptr<data::SampleSource> train_data_, valid_data_;
  MemoryPlan memory_plan_;
  size_t device_bytes_at_start_ = 0;

  // Host staging for one micro-batch, and its device copies (same tensors on the CPU).
  OwnedTensor tokens_host_, targets_host_, mask_host_;
  OwnedTensor tokens_dev_, targets_dev_, mask_dev_;

  int64_t iteration_ = 0;
  int64_t consumed_samples_ = 0;
  int64_t eval_cursor_ = 0;
  int64_t skipped_iterations_ = 0;
  int64_t nan_iterations_ = 0;
  std::vector<IterationRecord> history_;
  std::vector<EvalRecord> evals_;
  std::unique_ptr<std::ostream> jsonl_;
};

}  // namespace shardlm::train
