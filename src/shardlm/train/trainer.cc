#include "shardlm/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <ostream>

#include <nlohmann/json.hpp>

#include "shardlm/data/mock_gpt_dataset.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/device_queries.h"
#include "shardlm/ops/ops.h"
#include "shardlm/data/pretraining_sampler.h"
#include "shardlm/optim/grad_clip.h"
#include "shardlm/train/device_select.h"
#include "shardlm/train/rank_model.h"
#include "shardlm/train/training_data.h"

namespace shardlm::train {

namespace {

// ", fp8 hybrid (E4M3 activations and weights, E5M2 gradients; tensorwise scales) in layers
// 1-22 of 24": the startup log's fp8 part (empty without --fp8-format).
std::string fp8_description(const model::TransformerConfig& m) {
  if (!m.fp8.enabled()) return "";
  std::string s = ", fp8 " + m.fp8.name() +
                  (m.fp8.format == model::Fp8Format::kHybrid
                       ? " (E4M3 activations and weights, E5M2 gradients"
                       : " (E4M3 activations, weights and gradients") +
                  "; tensorwise scales" +
                  (m.fp8.margin > 0 ? ", margin " + std::to_string(m.fp8.margin) : "") +
                  ") in the transformer layers' linears";
  if (m.fp8_first_last_layers_bf16)
    s += " of layers " + std::to_string(m.fp8_layers_at_start_in_bf16) + "-" +
         std::to_string(m.num_layers - m.fp8_layers_at_end_in_bf16 - 1) + " (0-based; the rest 16-bit)";
  return s;
}
std::string format(const char* fmt, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return buf;
}
}  // namespace

struct Trainer::SingleRank {
  std::unique_ptr<DeviceContext> device;
  std::unique_ptr<dist::ThreadWorld> world;
  std::unique_ptr<dist::RankContext> rank;
};

std::unique_ptr<Trainer::SingleRank> Trainer::make_single_rank(const TrainConfig& cfg) {
  auto single = std::make_unique<SingleRank>();
  single->device = std::make_unique<DeviceContext>(select_device(cfg.device));
  single->world = std::make_unique<dist::ThreadWorld>(1);
  // A 1-rank layout: TP/PP/CP > 1 are rejected here, naming the flags.
  const dist::ParallelLayout layout = dist::ParallelLayout::create(1, cfg.parallel_sizes());
  single->rank = std::make_unique<dist::RankContext>(
      dist::RankContext::create(*single->device, single->world->communicator(0), layout));
  return single;
}

Trainer::Trainer(const TrainConfig& cfg, std::ostream& log,
                 std::unique_ptr<data::SampleSource> train_data,
                 std::unique_ptr<data::SampleSource> valid_data)
    : Trainer(cfg, make_single_rank(cfg), nullptr, log, std::move(train_data),
              std::move(valid_data)) {}

Trainer::Trainer(const TrainConfig& cfg, dist::RankContext& rank, std::ostream& log,
                 std::unique_ptr<data::SampleSource> train_data,
                 std::unique_ptr<data::SampleSource> valid_data)
    : Trainer(cfg, nullptr, &rank, log, std::move(train_data), std::move(valid_data)) {}

Trainer::Trainer(const TrainConfig& cfg, std::unique_ptr<SingleRank> single,
                 dist::RankContext* rank, std::ostream& log,
                 std::unique_ptr<data::SampleSource> train_data,
                 std::unique_ptr<data::SampleSource> valid_data)
    : single_(std::move(single)), rank_(rank ? rank : single_->rank.get()), cfg_(cfg),
      log_(rank_->world_rank() == 0 ? log : null_log_), device_(&rank_->device()),
      train_data_(std::move(train_data)), valid_data_(std::move(valid_data)) {
  // Startup phases, timed for the log (issue 4: launch to first step < 5 s for 1.3B).
  using StartupClock = std::chrono::steady_clock;
  const StartupClock::time_point startup_begin = StartupClock::now();
  std::vector<std::pair<const char*, double>> startup_phases;
  StartupClock::time_point phase_begin = startup_begin;
  bool backend_ready = false;  // the device can be synchronised once its backend is up
  auto phase_done = [&](const char* name) {
    if (device_->device().is_cuda() && backend_ready) ops::synchronize(*device_);  // async work
    const StartupClock::time_point now = StartupClock::now();
    startup_phases.emplace_back(name, std::chrono::duration<double>(now - phase_begin).count());
    phase_begin = now;
  };
  resolve_vocab_size(cfg_);
  const dist::ParallelLayout& layout = rank_->layout();
  SHARDLM_REQUIRE(layout.tp() == cfg_.parallel.tensor_model_parallel_size &&
                      layout.pp() == cfg_.parallel.pipeline_model_parallel_size &&
                      layout.cp() == cfg_.parallel.context_parallel_size &&
                      layout.ep() == cfg_.parallel.expert_model_parallel_size,
                  ErrorKind::kInvalidConfig,
                  "the rank context's layout (" + layout.describe() +
                      ") does not match --tensor-model-parallel-size " +
                      std::to_string(cfg_.parallel.tensor_model_parallel_size) +
                      " / --pipeline-model-parallel-size " +
                      std::to_string(cfg_.parallel.pipeline_model_parallel_size) +
                      " / --context-parallel-size " +
                      std::to_string(cfg_.parallel.context_parallel_size) +
                      " / --expert-model-parallel-size " +
                      std::to_string(cfg_.parallel.expert_model_parallel_size) +
                      "; build it with ParallelLayout::create(world, cfg.parallel_sizes())");
  cfg_.data_parallel_size = layout.dp();
  // The vocabulary is padded to a multiple of --make-vocab-size-divisible-by x TP (Megatron).
  cfg_.model.tensor_model_parallel_size = layout.tp();
  cfg_.validate();
  cfg_.validate_parallel(rank_->world_size());
  for (dist::GroupKind kind : dist::kAllGroupKinds)
    if (rank_->has_group(kind)) rank_->group(kind).set_timeout(cfg_.distributed_timeout());
  rank_->world().set_timeout(cfg_.distributed_timeout());
  SHARDLM_REQUIRE(!((cfg_.bf16 || cfg_.fp16) && device_->device().is_cpu()),
                  ErrorKind::kInvalidConfig,
                  std::string(cfg_.bf16 ? "--bf16" : "--fp16") +
                      " needs --device cuda; the CPU backend computes in fp32/fp64 (no GPU was "
                      "found for --device " + cfg_.device + ")");
  SHARDLM_REQUIRE(!cfg_.model.fp8.enabled() || device_->device().is_cpu() || cfg_.bf16 ||
                      cfg_.fp16,
                  ErrorKind::kInvalidConfig,
                  "--fp8-format on " + device_->device().to_string() +
                      " needs --bf16 or --fp16 (the fp8 GEMMs take and give 16-bit activations, "
                      "as in Megatron); add --bf16");
  SHARDLM_REQUIRE(cfg_.main_params_dtype != "fp64" || device_->device().is_cpu(),
                  ErrorKind::kInvalidConfig,
                  "--main-params-dtype fp64 is the CPU's mixed precision; on " +
                      device_->device().to_string() + " use --bf16 (fp32 master weights), or "
                      "pass --device cpu");
  // master_dtype: parameters, gradients and optimizer state; dtype_: compute (activations,
  // the modules' parameter copies). They differ under --bf16 / --fp16 and, on the CPU, with
  // --main-params-dtype fp64 (fp32 compute).
  const DType master_dtype = master_dtype_of(cfg_);
  dtype_ = compute_dtype_of(cfg_);
  if (cfg_.fp16) loss_scaler_ = std::make_unique<optim::LossScaler>(cfg_.loss_scaler);
  initialize_backend(*device_);
  set_attention_backend(*device_, cfg_.attention_backend);
  backend_ready = true;
  phase_done("backend");

  // Pipeline: this rank's chunks (layers by global index), activation slots per chunk from the
  // schedule's in-flight count. One rank: one chunk holding the whole model, one slot.
  if (layout.pp() > 1)
    pipeline_ = parallel::make_pipeline_plan(cfg_.pipeline_plan_config(layout.dp()));
  // This rank's chunks, their parameters laid out in the data-parallel buckets, and the plan
  // of every allocation, made from the config; a plan that cannot fit is refused before
  // anything is allocated (a clear message instead of a CUDA out-of-memory error mid-run).
  // Context parallelism: the rank holds T / CP positions of every sequence.
  const int64_t mbs = cfg_.micro_batch_size, T = cfg_.model.seq_length / layout.cp();
  {
    RankModel rank_model = build_rank_model(
        cfg_, layout, rank_->coord().pp,
        model::TensorParallel::of(*rank_, cfg_.parallel.sequence_parallel),
        pipeline_ ? &*pipeline_ : nullptr, model::ContextParallel::of(*rank_),
        model::ExpertParallel::of(*rank_));
    memory_plan_ = plan_rank_memory(cfg_, layout, rank_model, !device_->device().is_cpu());
    registry_ = std::move(rank_model.registry);
    chunks_ = std::move(rank_model.chunks);
    grad_buffer_ = std::move(rank_model.grad_buffer);
  }
  device_bytes_at_start_ = ops::device_memory(*device_).used_bytes();
  memory_plan_.check_fits(ops::device_memory(*device_), device_->device().to_string());

  phase_done("plan");
  registry_.finalize(*device_, master_dtype, cfg_.seed, dtype_);
  phase_done("parameters");
  // Before the activations: under mixed precision the distributed optimizer takes its shards of
  // the master weights and the registry frees the full master buffer, so the two never coexist.
  if (cfg_.parallel.use_distributed_optimizer) {
    // Expert buckets (expert parallelism) are sharded over the expert-data-parallel group.
    std::vector<optim::BucketRange> buckets;
    for (const parallel::Bucket& b : grad_buffer_.buckets())
      buckets.push_back({b.range.begin, b.range.end,
                         b.group == parallel::BucketGroup::kExpert ? 1 : 0});
    dist_optimizer_ = std::make_unique<optim::DistributedOptimizer>(
        *device_, registry_, std::move(buckets),
        std::vector<dist::Communicator*>{&grad_group(), expert_grad_group()}, cfg_.adamw());
  } else {
    optimizer_ = std::make_unique<optim::AdamW>(registry_, cfg_.adamw());
  }
  activations_.reserve(chunks_.size());
  for (size_t c = 0; c < chunks_.size(); ++c) {
    chunks_[c]->bind(registry_);
    activations_.emplace_back(device_->device(), chunks_[c]->plan_activation_bytes(dtype_, mbs),
                              "activations");
    chunks_[c]->allocate_activations(activations_.back(), dtype_, mbs);
  }

  grad_sync_ = std::make_unique<parallel::GradSync>(
      registry_, grad_buffer_, grad_group(), *device_,
      parallel::GradSyncConfig{cfg_.parallel.overlap_grad_reduce,
                               cfg_.parallel.use_distributed_optimizer},
      expert_grad_group());
  // --overlap-grad-reduce: backward reports finished parameters; complete buckets start
  // reducing while backward continues (GradSync ignores the calls otherwise).
  for (auto& chunk : chunks_)
    chunk->set_grad_ready_callback(
        [this](std::span<model::Parameter* const> params) { grad_sync_->on_grads_ready(params); });
  // --overlap-param-gather: the forward waits for each bucket's parameter all-gather only when
  // it reaches that bucket's parameters (Megatron's forward pre-hooks).
  if (dist_optimizer_ && cfg_.parallel.overlap_param_gather && grad_group().size() > 1)
    for (auto& chunk : chunks_)
      chunk->set_params_needed_callback([this](std::span<model::Parameter* const> params) {
        dist_optimizer_->wait_for(params);
      });
  schedule_ = std::make_unique<optim::LearningRateSchedule>(cfg_.lr_schedule());
  phase_done("optimizer");
  // A middle pipeline stage reads no samples: it builds no dataset (no index files opened, no
  // sample index built), so adding stages costs no data start-up.
  // (BERT's stages all read samples: every attention layer needs the padding lengths.)
  const bool reads_data = !pipeline_ || rank_->is_first_pipeline_stage() ||
                          rank_->is_last_pipeline_stage() || cfg_.model.bert();
  if (!train_data_ && reads_data) build_data();
  phase_done("data");
  if (pipeline_) build_pipeline();

  staging_.emplace(*device_, dtype_, mbs, cfg_.model, model().context_parallel(),
                   cfg_.model.vocab_size);
  if (!cfg_.logging.log_jsonl.empty() && rank_->world_rank() == 0) {
    jsonl_ = std::make_unique<std::ofstream>(cfg_.logging.log_jsonl);
    if (!*jsonl_)
      throw Error(ErrorKind::kIo, "cannot write --log-jsonl file " + cfg_.logging.log_jsonl);
  }

  const std::string precision =
      cfg_.bf16   ? format("bf16 mixed precision (bf16 compute, %s master weights and gradients)",
                           dtype_name(master_dtype))
      : cfg_.fp16 ? format("fp16 mixed precision (fp16 compute, %s master weights and gradients, "
                           "%s loss scale %.0f)",
                           dtype_name(master_dtype),
                           loss_scaler_->dynamic() ? "dynamic" : "constant", loss_scaler_->scale())
      : dtype_ != master_dtype
          ? format("%s compute, %s master weights and gradients (--main-params-dtype)",
                   dtype_name(dtype_), dtype_name(master_dtype))
          : std::string(dtype_name(dtype_));
  log_ << format("> building GPT model: %lld layers, hidden %lld, %lld heads (%lld query groups), "
                 "ffn %lld, seq %lld, padded vocab %lld (from %lld)\n",
                 (long long)cfg_.model.num_layers, (long long)cfg_.model.hidden_size,
                 (long long)cfg_.model.num_attention_heads, (long long)cfg_.model.query_groups(),
                 (long long)cfg_.model.ffn_size(), (long long)T,
                 (long long)cfg_.model.padded_vocab_size(), (long long)cfg_.model.vocab_size)
       << format("> number of parameters: %lld on %s, compute dtype %s\n", (long long)registry_.numel(),
                 device_->device().to_string().c_str(), dtype_name(dtype_))
       << "> precision: " << precision << fp8_description(cfg_.model) << "\n"
       << memory_plan_.format();
  log_
       << format("> global batch %lld = micro-batch %lld x %lld micro-batches x data-parallel "
                 "%lld\n",
                 (long long)(mbs * cfg_.num_microbatches() * cfg_.data_parallel_size),
                 (long long)mbs, (long long)cfg_.num_microbatches(),
                 (long long)cfg_.data_parallel_size);
  log_ << "> parallel layout: " << layout.describe()
       << (cfg_.parallel.sequence_parallel && layout.tp() > 1 ? ", sequence parallel" : "")
       << "\n";
  if (pipeline_) {
    const parallel::PipelinePartition& part = pipeline_->partition;
    const int P = part.num_stages(), V = part.num_chunks(), M = pipeline_->num_microbatches;
    log_ << format("> pipeline: schedule %s, %d stages x %d chunks, %d micro-batches, bubble "
                   "(P-1)/(V*M) = %.1f%% of the step; layers:",
                   pipeline_->schedule.name.c_str(), P, V, M,
                   100.0 * (P - 1) / static_cast<double>(V * M));
    for (int c = 0; c < V; ++c)
      for (int r = 0; r < P; ++r)
        log_ << format(" s%d.c%d [%d,%d)", r, c, part.layers(r, c).begin, part.layers(r, c).end);
    log_ << "\n";
  }
  log_ << grad_buffer_.describe(registry_);
  const size_t unsharded = 2 * static_cast<size_t>(registry_.numel()) * dtype_size(master_dtype);
  // "1/4", or under expert parallelism "1/4, experts 1/2" (sharded over the expert-DP ranks).
  const std::string share =
      format("1/%d", grad_group().size()) +
      (expert_grad_group() ? format(", experts 1/%d", expert_grad_group()->size()) : "");
  log_ << format("> optimizer state (Adam moments) on this rank: %.3f MiB", optimizer_state_bytes() / 1048576.0)
       << (dist_optimizer_
               ? format(" (distributed optimizer: %s of %.3f MiB)", share.c_str(),
                        unsharded / 1048576.0)
               : std::string(" (not sharded)"))
       << "\n";
  if (dist_optimizer_ && dist_optimizer_->shards_master_weights())
    log_ << format("> master weights (%s) on this rank: %.3f MiB (distributed optimizer: %s "
                   "of %.3f MiB; the %s compute weights are all-gathered after each step)\n",
                   dtype_name(master_dtype), dist_optimizer_->master_bytes() / 1048576.0,
                   share.c_str(), unsharded / 2 / 1048576.0, dtype_name(dtype_));
  log_ << format("> startup: %.2f s (", std::chrono::duration<double>(StartupClock::now() -
                                                                     startup_begin).count());
  for (size_t i = 0; i < startup_phases.size(); ++i)
    log_ << (i ? ", " : "") << startup_phases[i].first
         << format(" %.2f s", startup_phases[i].second);
  log_ << ")\n";
  log_.flush();

  // --load: parameters, optimizer state and progress (train/checkpointing.h).
  checkpointer_ = std::make_unique<Checkpointer>(
      cfg_, log_, &rank_->world(),
      ReplicaRanks{grad_group().rank(), rank_->tp().rank(),
                   expert_grad_group() ? expert_grad_group()->rank() : grad_group().rank()});
  TrainingProgress resumed = progress();
  OptimizerStateView opt = optimizer_view();
  if (checkpointer_->load(*device_, registry_, &opt, resumed)) {
    if (optimizer_) optimizer_->set_steps_taken(opt.steps);
    if (dist_optimizer_) dist_optimizer_->set_steps_taken(opt.steps);
    iteration_ = resumed.iteration;
    consumed_samples_ = resumed.consumed_samples;
    eval_cursor_ = resumed.eval_cursor;
    skipped_iterations_ = resumed.skipped_iterations;
    nan_iterations_ = resumed.nan_iterations;
    cfg_.seed = resumed.seed;
    if (loss_scaler_ && resumed.has_loss_scaler)
      loss_scaler_->set_state({resumed.loss_scale, resumed.loss_scale_growth_tracker,
                               resumed.loss_scale_hysteresis_tracker});
    // Mixed precision: the compute weights from the loaded master weights (with sharded master
    // weights, each rank converts its shards and they are all-gathered).
    if (dist_optimizer_)
      dist_optimizer_->sync_compute_values(*device_);
    else
      registry_.sync_compute_values(*device_);
  }
}

TrainingProgress Trainer::progress() const {
  TrainingProgress p{iteration_, consumed_samples_, eval_cursor_, skipped_iterations_,
                     nan_iterations_, cfg_.seed};
  if (loss_scaler_) {  // --fp16: the dynamic loss scale is part of the checkpoint
    p.has_loss_scaler = true;
    p.loss_scale = loss_scaler_->state().scale;
    p.loss_scale_growth_tracker = loss_scaler_->state().growth_tracker;
    p.loss_scale_hysteresis_tracker = loss_scaler_->state().hysteresis_tracker;
  }
  return p;
}

OptimizerStateView Trainer::optimizer_view() const {
  if (optimizer_) return optimizer_state(*optimizer_, registry_);
  OptimizerStateView v{dist_optimizer_->steps_taken(), {}, dist_optimizer_->exp_avg(),
                       dist_optimizer_->exp_avg_sq(), true, dist_optimizer_->master_values()};
  for (const optim::BucketRange& r : dist_optimizer_->owned_ranges()) v.owned.emplace_back(r.begin, r.end);
  return v;
}

size_t Trainer::optimizer_state_bytes() const {
  if (dist_optimizer_) return dist_optimizer_->state_bytes();
  return optimizer_->exp_avg().nbytes() + optimizer_->exp_avg_sq().nbytes();
}

void Trainer::finish_param_gather() {
  if (!dist_optimizer_ || !dist_optimizer_->param_gather_pending()) return;
  // Under mixed precision the gather moved compute weights (the master weights are sharded),
  // else the fp32 weights themselves: nothing to convert either way.
  dist_optimizer_->finish_param_gather();
}

double Trainer::data_parallel_mean(double value) {
  dist::Communicator& dp = rank_->dp();
  return all_reduce_sum(dp, value) / static_cast<double>(dp.size());
}

double Trainer::all_reduce_sum(dist::Communicator& group, double value) {
  if (group.size() == 1) return value;
  OwnedTensor host = OwnedTensor::empty(DType::kF64, {1});
  host.view().data<double>()[0] = value;
  if (device_->device().is_cpu()) {
    group.all_reduce(host.view());
  } else {  // NCCL reduces device memory
    OwnedTensor dev = OwnedTensor::empty(DType::kF64, {1}, device_->device());
    ops::copy(*device_, dev.view(), host.view());
    group.all_reduce(dev.view());
    ops::copy(*device_, host.view(), dev.view());
  }
  return host.view().data<double>()[0];
}

void Trainer::build_pipeline() {
  const parallel::PipelineSchedule& schedule = pipeline_->schedule;
  const int pp_rank = rank_->coord().pp, M = pipeline_->num_microbatches;
  const int64_t dp = cfg_.data_parallel_size, dp_rank = rank_->coord().dp;
  p2p_ = std::make_unique<parallel::PipelineP2P>(parallel::PipelineP2P::create(rank_->pp()));
  p2p_->activations().set_timeout(cfg_.distributed_timeout());
  p2p_->gradients().set_timeout(cfg_.distributed_timeout());
  p2p_->connect(*device_);
  // The DP sync learns which backward completes each chunk's gradients, and which is the last.
  chunk_last_backward_.assign(chunks_.size(), -1);
  for (const parallel::Action& a : schedule.ranks[static_cast<size_t>(pp_rank)])
    if (a.kind == parallel::ActionKind::kBackward) {
      chunk_last_backward_[static_cast<size_t>(a.chunk)] = a.microbatch;
      final_backward_ = a;
    }
  // Only the first stage reads tokens and only the last targets and the loss mask (BERT's
  // middle stages too read the batch: its padding lengths).
  if (rank_->is_first_pipeline_stage() || rank_->is_last_pipeline_stage() ||
      cfg_.model.bert()) {
    const int64_t B = cfg_.micro_batch_size, T = model().local_seq_length();
    pipeline_batches_.resize(static_cast<size_t>(M));
    for (PipelineBatch& b : pipeline_batches_) {
      b.tokens = OwnedTensor::empty(DType::kI32, {B, T}, device_->device());
      b.targets = OwnedTensor::empty(DType::kI32, {B, T}, device_->device());
      b.mask = OwnedTensor::empty(dtype_, {B, T}, device_->device());
      if (cfg_.model.bert()) {
        b.token_types = OwnedTensor::empty(DType::kI32, {B, T}, device_->device());
        b.key_lengths = OwnedTensor::empty(DType::kI32, {B}, device_->device());
        b.sentence_order = OwnedTensor::empty(DType::kI32, {B}, device_->device());
      }
    }
  }
  GPTPipelineStage::Callbacks cb;
  cb.batch = [this](int m) {
    return pipeline_batches_.empty() ? model::Batch{}
                                     : pipeline_batches_[static_cast<size_t>(m)].batch;
  };
  // Dropout keyed by the global micro-batch index, as without a pipeline.
  cb.step = [this, dp, dp_rank](int m) {
    model::StepContext step{*device_, cfg_.seed, static_cast<uint32_t>(iteration_),
                            static_cast<uint32_t>(m * dp + dp_rank), pipeline_training_};
    if (pipeline_training_) {
      step.moe_aux_loss = &moe_aux_sum_;
      step.moe_z_loss = &moe_z_sum_;
    }
    step.sop_loss = &sop_sum_;  // evaluation reports it too
    return step;
  };
  cb.before_backward = [this](int c, int m) {
    grad_sync_->begin_microbatch(m == chunk_last_backward_[static_cast<size_t>(c)]);
  };
  cb.after_backward = [this](int c, int m) {
    grad_sync_->end_microbatch(c == final_backward_.chunk && m == final_backward_.microbatch);
  };
  std::vector<model::GPTModel*> chunks;
  for (auto& chunk : chunks_) chunks.push_back(chunk.get());
  stage_ = std::make_unique<GPTPipelineStage>(std::move(chunks), pp_rank, schedule.num_stages,
                                              dtype_, device_->device(), cfg_.micro_batch_size,
                                              std::move(cb));
}

void Trainer::load_pipeline_batch(const data::SampleSource* source,
                                  std::span<const int64_t> indices, int m) {
  if (pipeline_batches_.empty()) return;  // a middle stage reads no data (and has no source)
  SHARDLM_CHECK(source != nullptr);
  const model::Batch staged = load_batch(*source, indices);
  PipelineBatch& b = pipeline_batches_[static_cast<size_t>(m)];
  ops::copy(*device_, b.tokens.view(), staged.tokens);
  ops::copy(*device_, b.targets.view(), staged.targets);
  ops::copy(*device_, b.mask.view(), staged.loss_mask);
  b.batch = {b.tokens.view(), b.targets.view(), b.mask.view(), staged.mask_sum};
  if (cfg_.model.bert()) {
    ops::copy(*device_, b.token_types.view(), staged.token_types);
    ops::copy(*device_, b.key_lengths.view(), staged.key_lengths);
    ops::copy(*device_, b.sentence_order.view(), staged.sentence_order);
    b.batch.token_types = b.token_types.view();
    b.batch.key_lengths = b.key_lengths.view();
    b.batch.sentence_order = b.sentence_order.view();
  }
}

double Trainer::pipeline_step(double loss_scale) {
  const int M = pipeline_->num_microbatches;
  const int64_t B = cfg_.micro_batch_size, dp = cfg_.data_parallel_size;
  const int64_t dp_rank = rank_->coord().dp;
  for (int m = 0; m < M; ++m)
    load_pipeline_batch(train_data_.get(),
                        data::pretraining_micro_batch_indices(consumed_samples_ + m * B * dp, B,
                                                              dp_rank, dp),
                        m);
  stage_->begin_step(loss_scale * context_parallel_size() / static_cast<double>(M));
  parallel::run_pipeline_schedule(pipeline_->schedule, *p2p_, *stage_);
  return stage_->loss_sum();
}

void Trainer::all_reduce_tied_embedding_grads() {
  // Megatron's _allreduce_embedding_grads: after the DP sync (with the distributed optimizer
  // both copies sit alone in a bucket, so their owned shards match), first + last stage.
  for (model::Parameter& p : registry_.parameters())
    if (p.spec.pipeline_tie != model::PipelineTie::kNone)
      rank_->embedding().all_reduce(p.grad);
}

Trainer::~Trainer() = default;

void Trainer::build_data() {
  const int64_t gbs = cfg_.micro_batch_size * cfg_.num_microbatches() * cfg_.data_parallel_size;
  const int64_t train_samples = cfg_.train_iters * gbs;
  // Megatron's counts: (train_iters / eval_interval + 1) evaluations of eval_iters batches.
  const int64_t evals = cfg_.train_iters / cfg_.logging.eval_interval + 1;
  const int64_t valid_samples = evals * cfg_.logging.eval_iters * gbs;
  TrainingData data = build_training_data(cfg_, train_samples, valid_samples);
  train_data_ = std::move(data.train);
  valid_data_ = std::move(data.valid);
}

model::Batch Trainer::load_batch(const data::SampleSource& source, int64_t first_sample) {
  std::vector<int64_t> indices(static_cast<size_t>(cfg_.micro_batch_size));
  for (size_t b = 0; b < indices.size(); ++b) indices[b] = first_sample + static_cast<int64_t>(b);
  return load_batch(source, indices);
}

model::Batch Trainer::load_batch(const data::SampleSource& source,
                                 std::span<const int64_t> sample_indices) {
  return staging_->load(source, sample_indices);
}

double Trainer::microbatch_loop(double loss_scale) {
  const int64_t M = cfg_.num_microbatches(), B = cfg_.micro_batch_size;
  const int64_t dp = cfg_.data_parallel_size, dp_rank = rank_->coord().dp;
  double loss_sum = 0;
  for (int64_t m = 0; m < M; ++m) {
    // Dropout is keyed by the GLOBAL micro-batch index (m·DP + dp rank: the same samples as
    // micro-batch m·DP + r of a single rank), so every layout draws the same masks.
    model::StepContext step{*device_, cfg_.seed, static_cast<uint32_t>(iteration_),
                            static_cast<uint32_t>(m * dp + dp_rank), true};
    step.moe_aux_loss = &moe_aux_sum_;
    step.moe_z_loss = &moe_z_sum_;
    step.sop_loss = &sop_sum_;
    // Megatron's MegatronPretrainingSampler: micro-batch m of this iteration is this rank's
    // slice of the global micro-batch starting at consumed + m * B * dp.
    const std::vector<int64_t> indices = data::pretraining_micro_batch_indices(
        consumed_samples_ + m * B * dp, B, dp_rank, dp);
    model::Batch batch = load_batch(*train_data_, indices);
    grad_sync_->begin_microbatch(m == M - 1);
    loss_sum += model().forward(step, batch);
    model().backward(step, batch, loss_scale * context_parallel_size() / static_cast<double>(M));
    // --bf16: folds the bf16 gradients into the fp32 main gradients; after the last
    // micro-batch, starts the data-parallel reduction of the buckets not started yet.
    grad_sync_->end_microbatch();
  }
  return loss_sum;
}

IterationRecord Trainer::train_step() {
  const int64_t M = cfg_.num_microbatches(), B = cfg_.micro_batch_size;
  IterationRecord rec;
  rec.iteration = iteration_ + 1;
  rec.lr = schedule_->lr_at(iteration_);
  // --overlap-param-gather: the forward waits bucket by bucket (the parameters-needed hook).
  registry_.begin_step_grads(*device_);  // --bf16/--fp16: the first fold assigns
  grad_sync_->start_iteration();
  // --fp16: backward runs on loss * scale so small gradients survive in fp16.
  const double loss_scale = loss_scaler_ ? loss_scaler_->scale() : 1.0;
  rec.loss_scale = loss_scale;
  moe_aux_sum_ = moe_z_sum_ = sop_sum_ = 0;
  double loss_sum = pipeline_ ? pipeline_step(loss_scale) : microbatch_loop(loss_scale);
  registry_.end_step_grads(*device_);  // a parameter no fold reached: zero, not last step's
  finish_param_gather();  // every bucket was reached by now; the step needs none pending
  grad_sync_->wait();  // gradients are now averaged over DP (this rank's shards with the DO)
  if (pipeline_) {
    all_reduce_tied_embedding_grads();
    loss_sum = all_reduce_sum(rank_->pp(), loss_sum);  // only the last stage computed it
  }
  loss_sum = all_reduce_sum(rank_->cp(), loss_sum);  // each CP rank has its positions' part
  rec.loss = data_parallel_mean(loss_sum / static_cast<double>(M));
  // Megatron's load_balancing_loss and z_loss: each over its coefficient, averaged over the MoE
  // layers (summed over the pipeline stages that hold them, and over the CP ranks, each of
  // which has its tokens' part) and the micro-batches.
  auto moe_loss_mean = [&](double sum) {
    if (pipeline_) sum = all_reduce_sum(rank_->pp(), sum);
    sum = all_reduce_sum(rank_->cp(), sum);
    return data_parallel_mean(sum / static_cast<double>(M * cfg_.model.num_moe_layers()));
  };
  if (logs_moe_aux_loss()) rec.moe_aux_loss = moe_loss_mean(moe_aux_sum_);
  if (logs_moe_z_loss()) rec.moe_z_loss = moe_loss_mean(moe_z_sum_);
  if (logs_sop_loss()) {  // the head's stage has it: summed over stages like the loss
    const double sop = pipeline_ ? all_reduce_sum(rank_->pp(), sop_sum_) : sop_sum_;
    rec.sop_loss = data_parallel_mean(sop / static_cast<double>(M));
  }
  // --fp16: undo the loss scale on the fp32 main gradients (an overflow stays inf/NaN, so the
  // norm below is not finite and the step is skipped).
  if (loss_scaler_) ops::scale_inplace(*device_, registry_.flat_grads(), 1.0 / loss_scale);
  // Each gradient element counted once: TP-replicated ones on TP rank 0, with the distributed
  // optimizer only the owned shards, summed over the ranks that hold disjoint parts.
  optim::GradNormScope scope;
  scope.tp_rank = rank_->coord().tp;
  if (dist_optimizer_) {
    scope.owned = dist_optimizer_->owned_ranges();
    // Pipeline stages hold disjoint parameters too: then every rank's part counts.
    scope.sum_group = pipeline_ ? &rank_->world() : &rank_->group(dist::GroupKind::kTpDpCp);
  } else if (expert_grad_group()) {
    // Expert parallelism: the EP ranks hold different experts; each copy is counted on its
    // replicas' first rank, summed over every rank.
    scope.count_dense = grad_group().rank() == 0;
    scope.count_expert = expert_grad_group()->rank() == 0;
    scope.sum_group = &rank_->world();
  } else {
    scope.sum_group = &rank_->model_parallel();  // tp x pp
  }
  // The clipping factor goes into the optimizer's kernel: no separate pass over the gradients.
  const optim::GradClip clip = optim::grad_clip(*device_, registry_, cfg_.optimizer.clip_grad, scope);
  rec.grad_norm = clip.norm;
  if (loss_scaler_) loss_scaler_->update(!std::isfinite(rec.grad_norm));
  if (std::isfinite(rec.grad_norm)) {
    if (dist_optimizer_) {
      dist_optimizer_->step(*device_, rec.lr, clip.coeff);  // shard update, then the all-gather
      if (!cfg_.parallel.overlap_param_gather) finish_param_gather();
    } else {
      optimizer_->step(*device_, rec.lr, clip.coeff);  // --bf16: also writes the compute weights
    }
  } else {
    rec.skipped = true;
    ++skipped_iterations_;
    if (!loss_scaler_) ++nan_iterations_;  // an fp16 overflow is a skipped step, not a NaN
  }
  ++iteration_;
  consumed_samples_ += M * B * cfg_.data_parallel_size;
  history_.push_back(rec);
  return rec;
}

double Trainer::evaluate() {
  const int64_t M = cfg_.num_microbatches(), B = cfg_.micro_batch_size;
  const int64_t dp = cfg_.data_parallel_size, dp_rank = rank_->coord().dp;
  finish_param_gather();
  double sum = 0;
  int64_t count = 0;
  sop_sum_ = 0;
  for (int64_t it = 0; it < cfg_.logging.eval_iters; ++it) {
    for (int64_t m = 0; m < M; ++m) {
      model::StepContext step{*device_, cfg_.seed, static_cast<uint32_t>(iteration_),
                              static_cast<uint32_t>(m), false};
      step.sop_loss = &sop_sum_;
      // Middle pipeline stages hold no dataset; the stages that read data check it (a throw
      // there makes the middle stages' peers fail fast).
      const bool middle_stage = pipeline_ && pipeline_batches_.empty();
      SHARDLM_REQUIRE(middle_stage || (valid_data_ && valid_data_->size() > 0),
                      ErrorKind::kInvalidConfig,
                      "validation was requested (--eval-iters > 0) but the validation split is "
                      "empty; give it a share in --split or pass --eval-iters 0");
      // The validation samples are sharded over DP like the training ones.
      const std::vector<int64_t> indices =
          data::pretraining_micro_batch_indices(eval_cursor_, B, dp_rank, dp);
      eval_cursor_ += B * dp;
      ++count;
      if (pipeline_) {  // forward only, stage after stage; the loss is on the last stage
        load_pipeline_batch(valid_data_.get(), indices, 0);
        pipeline_training_ = false;
        sum += stage_->forward_only(0, p2p_->activations());
        pipeline_training_ = true;
        continue;
      }
      model::Batch batch = load_batch(*valid_data_, indices);
      sum += model().forward(step, batch);
    }
  }
  if (pipeline_) sum = all_reduce_sum(rank_->pp(), sum);
  sum = all_reduce_sum(rank_->cp(), sum);
  const double loss = count ? data_parallel_mean(sum / static_cast<double>(count)) : 0.0;
  evals_.push_back({iteration_, loss});
  // BERT: Megatron reports the masked-LM and sentence-order parts separately.
  double sop = 0;
  if (logs_sop_loss()) {
    sop = pipeline_ ? all_reduce_sum(rank_->pp(), sop_sum_) : sop_sum_;
    sop = count ? data_parallel_mean(sop / static_cast<double>(count)) : 0.0;
  }
  const double lm = loss - sop;
  const std::string line =
      format(" validation loss at iteration %lld | lm loss value: %.6E | lm loss PPL: %.6E | ",
             (long long)iteration_, lm, std::exp(std::min(lm, 700.0))) +
      (logs_sop_loss() ? format("sop loss value: %.6E | ", sop) : std::string());
  const std::string rule(line.size(), '-');
  log_ << rule << "\n" << line << "\n" << rule << "\n";
  log_.flush();
  if (jsonl_)
    *jsonl_ << nlohmann::json{{"type", "eval"}, {"iteration", iteration_}, {"lm_loss", loss}}.dump()
            << "\n" << std::flush;
  return loss;
}

void Trainer::train() {
  using Clock = std::chrono::steady_clock;
  auto interval_start = Clock::now();
  while (iteration_ < cfg_.train_iters) {
    train_step();
    if (iteration_ % cfg_.logging.log_interval == 0 || iteration_ == cfg_.train_iters) {
      const double elapsed =
          std::chrono::duration<double>(Clock::now() - interval_start).count();
      log_interval_line(elapsed);
      interval_start = Clock::now();
    }
    if (cfg_.logging.eval_iters > 0 && iteration_ % cfg_.logging.eval_interval == 0 &&
        iteration_ < cfg_.train_iters) {
      evaluate();
      interval_start = Clock::now();
    }
    if (!cfg_.checkpoint.save.empty() || cfg_.checkpoint.exit_interval > 0 ||
        cfg_.checkpoint.exit_duration_in_mins > 0 || cfg_.checkpoint.exit_signal_handler) {
      finish_param_gather();  // a checkpoint must hold the updated parameters
      const OptimizerStateView opt = optimizer_view();
      if (checkpointer_->after_step(*device_, registry_, &opt, progress())) return;
    }
  }
  if (!cfg_.checkpoint.save.empty()) {
    finish_param_gather();
    const OptimizerStateView opt = optimizer_view();
    checkpointer_->finish(*device_, registry_, &opt, progress());
  }
  if (cfg_.logging.eval_iters > 0) evaluate();
  finish_param_gather();  // leave the parameters current
  if (device_->device().is_cuda()) {
    // Allocations are planned and made once, so memory in use now is the run's peak.
    const size_t used = ops::device_memory(*device_).used_bytes();
    log_ << "> peak device memory: " << format_bytes(used) << " in use on "
         << device_->device().to_string() << ", "
         << format_bytes(used > device_bytes_at_start_ ? used - device_bytes_at_start_ : 0)
         << " allocated by this run (planned " << format_bytes(memory_plan_.total()) << ")\n";
    log_.flush();
  }
}

void Trainer::log_interval_line(double elapsed_s) {
  // Megatron averages the loss over the iterations since the last log line.
  int64_t n = 0;
  double loss = 0, sop = 0;
  for (auto it = history_.rbegin(); it != history_.rend(); ++it) {
    const int64_t last_logged =
        (iteration_ - 1) / cfg_.logging.log_interval * cfg_.logging.log_interval;
    if (it->iteration <= last_logged) break;
    if (!it->skipped) loss += it->loss, sop += it->sop_loss, ++n;
  }
  loss = n ? loss / static_cast<double>(n) : std::nan("");
  sop = n ? sop / static_cast<double>(n) : std::nan("");
  const int64_t iters = static_cast<int64_t>(history_.size()) -
                        (iteration_ - 1) / cfg_.logging.log_interval * cfg_.logging.log_interval;
  const IterationRecord& last = history_.back();
  const int64_t gbs = cfg_.micro_batch_size * cfg_.num_microbatches() * cfg_.data_parallel_size;
  const double ms_per_iter = 1000.0 * elapsed_s / static_cast<double>(std::max<int64_t>(1, iters));
  const double tokens_per_s =
      static_cast<double>(gbs * cfg_.model.seq_length) * 1000.0 / std::max(ms_per_iter, 1e-9);
  log_ << format(" iteration %8lld/%8lld |", (long long)iteration_, (long long)cfg_.train_iters)
       << format(" consumed samples: %12lld |", (long long)consumed_samples_)
       << format(" elapsed time per iteration (ms): %.1f |", ms_per_iter)
       << format(" tokens per second: %.0f |", tokens_per_s)
       << format(" learning rate: %.6E |", schedule_->lr_at(iteration_))
       << format(" global batch size: %5lld |", (long long)gbs)
       << format(" lm loss: %.6E |", logs_sop_loss() ? loss - sop : loss)
       << (logs_sop_loss() ? format(" sop loss: %.6E |", sop) : std::string())
       << (logs_moe_aux_loss() ? format(" load_balancing_loss: %.6E |", last.moe_aux_loss)
                               : std::string())
       << (logs_moe_z_loss() ? format(" z_loss: %.6E |", last.moe_z_loss) : std::string())
       << (loss_scaler_ ? format(" loss scale: %.1f |", loss_scaler_->scale()) : std::string())
       << format(" grad norm: %.3f |", last.grad_norm)
       << format(" number of skipped iterations: %3lld |", (long long)skipped_iterations_)
       << format(" number of nan iterations: %3lld |", (long long)nan_iterations_) << "\n";
  log_.flush();
  if (jsonl_)
    *jsonl_ << nlohmann::json{{"type", "train"},
                              {"iteration", iteration_},
                              {"consumed_samples", consumed_samples_},
                              {"lm_loss", loss},
                              {"learning_rate", schedule_->lr_at(iteration_)},
                              {"grad_norm", last.grad_norm},
                              {"ms_per_iteration", ms_per_iter},
                              {"tokens_per_second", tokens_per_s},
                              {"skipped_iterations", skipped_iterations_}}
                   .dump()
            << "\n" << std::flush;
}

}  // namespace shardlm::train
