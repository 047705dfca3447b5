// Trainer: wires config → model → optimizer → data → training loop (DESIGN §1: train/ is the
// only layer that wires everything together).
//
// One iteration = num_microbatches forward/backward passes accumulating gradients into the flat
// gradient buffer, then global-norm clipping, then one AdamW step with the scheduled LR.
// Logs a Megatron-style line every --log-interval iterations and a validation loss every
// --eval-interval (and at the end). A step whose gradient norm is not finite is skipped
// (parameters untouched) and counted.
//
// Parallel (a RankContext): the model is built tensor-parallel over rc.tp() (--sequence-
// parallel optional); the flat buffers are laid out in data-parallel buckets
// (parallel::GradBuffer) and reduced over rc.dp() by parallel::GradSync — once per iteration,
// after the last micro-batch, bucket by bucket during backward with --overlap-grad-reduce,
// averaged (1/DP) — then clipped with the global norm (each element once across TP/DP) and
// stepped by AdamW or, with --use-distributed-optimizer, by optim::DistributedOptimizer (1/DP
// of the state, all-gather of the updated shards, waited before the next forward with
// --overlap-param-gather). Data-parallel rank r reads its slice of every global micro-batch
// (Megatron's pretraining sampler) and keys dropout by the global micro-batch index, so every
// layout trains exactly like one rank (tests/train/layout_equivalence_test.cc). Losses are
// averaged over DP; only world rank 0 logs.
//
// Pipeline parallel (--pipeline-model-parallel-size > 1, DESIGN §2.7): the rank builds one
// GPTModel per model chunk it holds (parallel::PipelinePlan: partition, M, schedule) with
// activation slots for the schedule's in-flight bound, and train_step runs the schedule through
// parallel::run_pipeline_schedule over a GPTPipelineStage. Data is loaded on the first and last
// stage only; the DP sync is told about every backward (the chunk's last micro-batch reports its
// gradients, buckets overlap with the rest of the schedule); after it, the tied embedding's two
// copies (first / last stage) are summed over the embedding group; the grad norm sums over all
// stages (the copy counted once); the last stage's loss is summed over the pipeline group so
// every rank (and rank 0's log line) has it. Evaluation runs forward only, stage after stage.
//
//   Trainer trainer(cfg, std::cout);            // one rank
//   Trainer trainer(cfg, rank_context, std::cout);  // one rank of a parallel job
//   trainer.train();
//   trainer.history();   // per-iteration loss, lr, grad norm (tests, determinism checks)
#pragma once

#include <iosfwd>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "shardlm/data/sample_source.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/model/parameter.h"
#include "shardlm/optim/adamw.h"
#include "shardlm/optim/loss_scaler.h"
#include "shardlm/optim/distributed_optimizer.h"
#include "shardlm/optim/lr_schedule.h"
#include "shardlm/parallel/grad_buffer.h"
#include "shardlm/parallel/grad_sync.h"
#include "shardlm/parallel/p2p.h"
#include "shardlm/parallel/pipeline_plan.h"
#include "shardlm/tensor/arena.h"
#include "shardlm/train/batch_staging.h"
#include "shardlm/train/memory_plan.h"
#include "shardlm/train/checkpointing.h"
#include "shardlm/train/gpt_pipeline_stage.h"
#include "shardlm/train/train_config.h"

namespace shardlm::train {

struct IterationRecord {
  int64_t iteration = 0;
  double loss = 0;       // mean over micro-batches
  double lr = 0;         // lr used for this iteration's update
  double grad_norm = 0;  // before clipping
  bool skipped = false;
  double loss_scale = 1.0;  // --fp16: the scale this iteration's backward used
  // MoE with --moe-aux-loss-coeff: the load-balancing loss over its coefficient, averaged over
  // MoE layers and micro-batches (Megatron's load_balancing_loss); 0 otherwise.
  double moe_aux_loss = 0;
  // With --moe-z-loss-coeff: the router z-loss over its coefficient, averaged alike; 0 otherwise.
  double moe_z_loss = 0;
  // BERT with the binary head: the sentence-order part of `loss` (Megatron's sop loss); 0
  // otherwise. The lm loss is loss - sop_loss.
  double sop_loss = 0;
};

struct EvalRecord {
  int64_t iteration = 0;
  double loss = 0;
};

class Trainer {
 public:
  // Sources may be injected (tests); otherwise they are built from cfg.data.
  // One rank: the trainer builds a 1-rank world (the parallel flags must all be 1).
  Trainer(const TrainConfig& cfg, std::ostream& log,
          std::unique_ptr<data::SampleSource> train_data = nullptr,
          std::unique_ptr<data::SampleSource> valid_data = nullptr);
  // One rank of a parallel job. `rank` (caller keeps it alive) must have been created with
  // ParallelLayout::create(world, cfg.parallel_sizes()); its device is the one trained on, and
  // cfg.data_parallel_size is taken from its layout. Only world rank 0 writes to `log`. Every
  // collective's deadline becomes --distributed-timeout-minutes.
  Trainer(const TrainConfig& cfg, dist::RankContext& rank, std::ostream& log,
          std::unique_ptr<data::SampleSource> train_data = nullptr,
          std::unique_ptr<data::SampleSource> valid_data = nullptr);
  ~Trainer();

  void train();
  // Runs one iteration (all micro-batches + optimizer step) and returns its record.
  IterationRecord train_step();
  double evaluate();

  const std::vector<IterationRecord>& history() const { return history_; }
  const std::vector<EvalRecord>& evaluations() const { return evals_; }
  // Waits for a pending parameter all-gather first (--overlap-param-gather), so the values
  // are always the current ones.
  model::ParameterRegistry& parameters() {
    finish_param_gather();
    return registry_;
  }
  dist::RankContext& rank() { return *rank_; }
  const parallel::GradBuffer& grad_buffer() const { return grad_buffer_; }
  const parallel::GradSync& grad_sync() const { return *grad_sync_; }
  // Distributed optimizer only (else null).
  const optim::DistributedOptimizer* distributed_optimizer() const { return dist_optimizer_.get(); }
  // Bytes of optimizer state (Adam moments) this rank holds.
  size_t optimizer_state_bytes() const;
  // Completes the distributed optimizer's parameter all-gather, if one is pending, and
  // refreshes the compute copy (--bf16). Called before every forward.
  void finish_param_gather();
  DeviceContext& device() { return *device_; }
  const TrainConfig& config() const { return cfg_; }
  const MemoryPlan& memory_plan() const { return memory_plan_; }
  // Device memory in use (cudaMemGetInfo; host RAM in use on the CPU) before the model was
  // allocated; now-minus-this is what the run allocated.
  size_t device_bytes_at_start() const { return device_bytes_at_start_; }
  int64_t iteration() const { return iteration_; }
  // False on a middle pipeline stage, which reads no samples and builds no dataset.
  bool has_training_data() const { return train_data_ != nullptr; }

 private:
  void build_data();
  // Samples first_sample, first_sample + 1, ... (validation), or the given global indices.
  model::Batch load_batch(const data::SampleSource& source, int64_t first_sample);
  model::Batch load_batch(const data::SampleSource& source,
                          std::span<const int64_t> sample_indices);
  void log_interval_line(double elapsed_s);
  // Mean of a per-rank value over the data-parallel group (losses).
  double data_parallel_mean(double value);
  // Sum of a per-rank value over `group` (the pipeline's loss: only the last stage has it).
  double all_reduce_sum(dist::Communicator& group, double value);

  // Pipeline parallelism (P > 1): builds plan, p2p channels, stage adapter.
  void build_pipeline();
  // Loads micro-batch m's data into its pipeline buffer (first / last stage only; a middle
  // stage has no buffers and no source, null).
  void load_pipeline_batch(const data::SampleSource* source, std::span<const int64_t> indices,
                           int m);
  // Runs the schedule for one step; returns the sum of the micro-batch losses (last stage).
  // One step's forward/backward over the micro-batches, returning the summed loss: the plain
  // loop (one chunk holding the model) or the pipeline schedule.
  double microbatch_loop(double loss_scale);
  double pipeline_step(double loss_scale);
  // After the DP sync: sums the tied embedding's gradient copies over the embedding group.
  void all_reduce_tied_embedding_grads();
  model::GPTModel& model() { return *chunks_.front(); }
  int context_parallel_size() const { return rank_->layout().cp(); }
  // Where gradients are reduced and the distributed optimizer shards: data x context ranks
  // (the data-parallel group itself without context parallelism, named so in errors).
  dist::Communicator& grad_group() const {
    return context_parallel_size() > 1 ? rank_->dp_cp() : rank_->dp();
  }
  // The experts' gradient group under expert parallelism (Megatron's expt_dp group); null
  // without it (the experts then reduce with the dense parameters).
  dist::Communicator* expert_grad_group() const {
    return rank_->layout().ep() > 1 ? &rank_->group(dist::GroupKind::kExpertDp) : nullptr;
  }

  // The single-rank constructor's own world: device, 1-rank ThreadWorld, RankContext.
  struct SingleRank;
  static std::unique_ptr<SingleRank> make_single_rank(const TrainConfig& cfg);
  Trainer(const TrainConfig& cfg, std::unique_ptr<SingleRank> single, dist::RankContext* rank,
          std::ostream& log, std::unique_ptr<data::SampleSource> train_data,
          std::unique_ptr<data::SampleSource> valid_data);

  std::unique_ptr<SingleRank> single_;  // declared first: rank_ may point into it
  dist::RankContext* rank_ = nullptr;
  std::ostream null_log_{nullptr};      // what ranks other than world rank 0 log to
  TrainConfig cfg_;
  std::ostream& log_;
  DeviceContext* device_ = nullptr;     // rank_->device()
  DType dtype_;
  model::ParameterRegistry registry_;
  std::vector<std::unique_ptr<model::GPTModel>> chunks_;  // [V] this rank's model chunks
  std::vector<Arena> activations_;                        // [V]
  std::unique_ptr<optim::AdamW> optimizer_;  // without --use-distributed-optimizer
  std::unique_ptr<optim::LossScaler> loss_scaler_;  // --fp16 only
  parallel::GradBuffer grad_buffer_;
  std::unique_ptr<parallel::GradSync> grad_sync_;
  std::unique_ptr<optim::DistributedOptimizer> dist_optimizer_;
  std::unique_ptr<optim::LearningRateSchedule> schedule_;
  std::unique_ptr<data::SampleSource> train_data_, valid_data_;
  MemoryPlan memory_plan_;
  size_t device_bytes_at_start_ = 0;

  // Pipeline parallelism (P > 1 only).
  std::optional<parallel::PipelinePlan> pipeline_;
  std::unique_ptr<parallel::PipelineP2P> p2p_;
  std::unique_ptr<GPTPipelineStage> stage_;
  struct PipelineBatch {  // one micro-batch's data, alive from its forward to its backward
    OwnedTensor tokens, targets, mask;
    OwnedTensor token_types, key_lengths, sentence_order;  // BERT
    model::Batch batch;
  };
  std::vector<PipelineBatch> pipeline_batches_;  // [M] (empty on middle stages)
  std::vector<int> chunk_last_backward_;          // [V] micro-batch of each chunk's last backward
  parallel::Action final_backward_;              // this rank's last backward of a step
  bool pipeline_training_ = true;                // dropout on (train) / off (evaluate)

  // One micro-batch's inputs, host staging and device copies (train/batch_staging.h).
  std::optional<BatchStaging> staging_;

  // --save / --load / exits (train/checkpointing.h), and the state it saves and restores.
  std::unique_ptr<Checkpointer> checkpointer_;
  TrainingProgress progress() const;
  OptimizerStateView optimizer_view() const;
  int64_t iteration_ = 0;
  int64_t consumed_samples_ = 0;
  int64_t eval_cursor_ = 0;
  int64_t skipped_iterations_ = 0;
  int64_t nan_iterations_ = 0;
  double moe_aux_sum_ = 0;  // this step's MoE load-balancing losses (StepContext::moe_aux_loss)
  double moe_z_sum_ = 0;    // and router z-losses (StepContext::moe_z_loss)
  double sop_sum_ = 0;      // and BERT's sentence-order losses (StepContext::sop_loss)
  bool logs_sop_loss() const { return cfg_.model.has_binary_head(); }
  bool logs_moe_z_loss() const {
    return cfg_.model.num_moe_layers() > 0 && cfg_.model.moe_z_loss_coeff > 0;
  }
  bool logs_moe_aux_loss() const {
    return cfg_.model.num_moe_layers() > 0 && cfg_.model.moe_aux_coeff() > 0;
  }
  std::vector<IterationRecord> history_;
  std::vector<EvalRecord> evals_;
  std::unique_ptr<std::ostream> jsonl_;
};

}  // namespace shardlm::train
