#include "shardlm/train/checkpointing.h"

#include <csignal>
#include <cstdio>
#include <ostream>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/detail/agree.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/ckpt/model_config_json.h"

namespace shardlm::train {

namespace {
// The process-global exit flag (see checkpointing.h: the only global state in ShardLM, because
// a signal handler can reach nothing else).
volatile std::sig_atomic_t g_exit_signal = 0;

extern "C" void on_exit_signal(int) { g_exit_signal = 1; }

void install_exit_signal_handler() {
  struct sigaction action {};
  action.sa_handler = on_exit_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

constexpr char kWordEmbeddings[] = "embedding.word_embeddings.weight";
constexpr char kOutputLayer[] = "output_layer.weight";

std::string key_of(const std::string& name) { return std::string(ckpt::kModelPrefix) + name; }

// All ranks agree on a stop decision (any rank's reason stops everyone).
bool any_rank(dist::Communicator* comm, DeviceContext& ctx, bool value) {
  return ckpt::detail::all_reduce_int(comm, ctx, value ? 1 : 0, dist::ReduceOp::kMax) != 0;
}

// The elements of `piece` in `local` (a parameter's local elements, flat or shaped): shaped as
// the piece's box when it is whole, else flat.
Tensor piece_view(const Tensor& local, const ckpt::ParameterPiece& piece) {
  const int64_t n = piece.local_end - piece.local_begin;
  const Shape shape = piece.region.is_whole_box() ? Shape(piece.region.extents) : Shape{n};
  return local.flat_view(piece.local_begin, shape);
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", s);
  return buf;
}
}  // namespace

bool exit_signal_received() { return g_exit_signal != 0; }
void TEST_raise_exit_signal() { g_exit_signal = 1; }
void TEST_clear_exit_signal() { g_exit_signal = 0; }

OptimizerStateView optimizer_state(const optim::AdamW& adam, const model::ParameterRegistry& reg) {
  return {adam.steps_taken(), {{0, reg.numel()}}, adam.exp_avg(), adam.exp_avg_sq(), false, Tensor()};
}

std::vector<ckpt::ShardedTensor> parameter_shards(const model::ParameterRegistry& reg,
                                                  const ReplicaRanks& ranks,
                                                  const OptimizerStateView* optimizer) {
  // Sharded master weights: every data-parallel rank writes the pieces it owns.
  if (optimizer != nullptr && optimizer->master.defined())
    return moment_shards(reg, optimizer->owned, optimizer->master, ckpt::kModelPrefix, true,
                         ranks);
  std::vector<ckpt::ShardedTensor> out;
  for (const model::Parameter& p : reg.parameters()) {
    const bool split = p.spec.split.is_split();
    for (const ckpt::ParameterPiece& piece : ckpt::pieces_of(p)) {
      // Replicas (other DP ranks, TP ranks of an unsplit parameter, or of a replicated query
      // group's k/v rows) are written once; the last pipeline stage's copy of the tied
      // embedding is the first stage's parameter.
      const bool write = ranks.writes(p) &&
                         p.spec.pipeline_tie != model::PipelineTie::kCopy &&
                         (split ? !piece.replica : ranks.tensor_parallel_rank == 0);
      out.push_back({key_of(p.spec.name), p.spec.global_shape, piece.region,
                     piece_view(p.value, piece), write});
    }
  }
  return out;
}

std::vector<ckpt::ShardedTensor> moment_shards(
    const model::ParameterRegistry& reg, const std::vector<std::pair<int64_t, int64_t>>& owned,
    const Tensor& state, const std::string& prefix, bool sharded, const ReplicaRanks& ranks) {
  std::vector<ckpt::ShardedTensor> out;
  int64_t state_offset = 0;  // where owned[i] starts in `state`
  for (const auto& [begin, end] : owned) {
    for (const model::Parameter& p : reg.parameters()) {
      const int64_t n = p.local_shape.numel();
      const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + n);
      if (lo >= hi) continue;
      const bool split = p.spec.split.is_split();
      for (const ckpt::ParameterPiece& piece : ckpt::pieces_of(p, lo - p.offset, hi - p.offset)) {
        // Local element k of p is element state_offset + (p.offset + k - begin) of `state`.
        ckpt::ParameterPiece at = piece;
        at.local_begin = state_offset + (p.offset + piece.local_begin - begin);
        at.local_end = at.local_begin + (piece.local_end - piece.local_begin);
        // Every TP rank holds the same pieces of a parameter not split across TP.
        out.push_back({prefix + p.spec.name, p.spec.global_shape, piece.region,
                       piece_view(state, at),
                       (sharded || ranks.writes(p)) &&
                           (split ? !piece.replica : ranks.tensor_parallel_rank == 0) &&
                           p.spec.pipeline_tie != model::PipelineTie::kCopy});
      }
    }
    state_offset += end - begin;
  }
  SHARDLM_CHECK_EQ(state_offset, state.numel());
  return out;
}

Checkpointer::Checkpointer(const TrainConfig& cfg, std::ostream& log, dist::Communicator* comm,
                           ReplicaRanks ranks)
    : cfg_(cfg), log_(log), comm_(comm), ranks_(ranks), writer_(comm),
      start_(std::chrono::steady_clock::now()) {
  if (cfg_.checkpoint.exit_signal_handler) install_exit_signal_handler();
}

Checkpointer::~Checkpointer() = default;

nlohmann::json Checkpointer::state_json(const OptimizerStateView* optimizer,
                                        const TrainingProgress& progress) const {
  const optim::LrScheduleConfig lr = cfg_.lr_schedule();
  const bool with_optim = optimizer != nullptr && !cfg_.checkpoint.no_save_optim;
  nlohmann::json state = {
      {"iteration", progress.iteration},
      {"consumed_samples", progress.consumed_samples},
      {"skipped_iterations", progress.skipped_iterations},
      {"nan_iterations", progress.nan_iterations},
      {"data_sampler",
       {{"consumed_samples", progress.consumed_samples},
        {"eval_cursor", progress.eval_cursor},
        {"micro_batch_size", cfg_.micro_batch_size},
        {"global_batch_size", cfg_.micro_batch_size * cfg_.num_microbatches() *
                                  cfg_.data_parallel_size},
        {"data_parallel_size", cfg_.data_parallel_size}}},
      {"rng",
       {{"seed", progress.seed},
        {"streams", "Philox4x32-10 keyed by (seed, parameter name, index) for init and "
                    "(seed, iteration, micro-batch, layer, site, position) for dropout"}}},
      {"optimizer",
       {{"type", "adamw"},
        {"saved", with_optim},
        {"steps", optimizer ? optimizer->steps : 0},
        {"sharded_over_data_parallel", optimizer ? optimizer->sharded_over_data_parallel : false},
        {"beta1", cfg_.optimizer.adam_beta1},
        {"beta2", cfg_.optimizer.adam_beta2},
        {"eps", cfg_.optimizer.adam_eps},
        {"weight_decay", cfg_.optimizer.weight_decay}}},
      {"lr_scheduler",
       {{"max_lr", lr.max_lr},
        {"min_lr", lr.min_lr},
        {"decay_style", optim::lr_decay_style_name(lr.decay_style)},
        {"warmup_steps", lr.warmup_steps},
        {"decay_steps", lr.decay_steps},
        {"num_steps", progress.iteration}}},
      {"loss_scaler", progress.has_loss_scaler
                          ? nlohmann::json{{"scale", progress.loss_scale},
                                           {"growth_tracker", progress.loss_scale_growth_tracker},
                                           {"hysteresis_tracker",
                                            progress.loss_scale_hysteresis_tracker}}
                          : nlohmann::json(nullptr)},
      {"model_config", ckpt::model_config_to_json(cfg_.model)},
      {"run",
       {{"micro_batch_size", cfg_.micro_batch_size},
        {"global_batch_size", cfg_.global_batch_size},
        {"train_iters", cfg_.train_iters},
        {"compute_dtype", cfg_.compute_dtype},
        {"bf16", cfg_.bf16},
        {"world_size", comm_ ? comm_->size() : 1},
        {"data_parallel_size", cfg_.data_parallel_size}}},
  };
  if (hf_config_.is_object()) state["hf_config"] = hf_config_;
  return state;
}

void Checkpointer::save(DeviceContext& ctx, const model::ParameterRegistry& reg,
                        const OptimizerStateView* optimizer, const TrainingProgress& progress) {
  const CheckpointConfig& c = cfg_.checkpoint;
  SHARDLM_CHECK(!c.save.empty());
  std::vector<ckpt::ShardedTensor> shards = parameter_shards(reg, ranks_, optimizer);
  if (optimizer != nullptr && !c.no_save_optim) {
    for (const auto& [prefix, state] : {std::pair{ckpt::kExpAvgPrefix, &optimizer->exp_avg},
                                        std::pair{ckpt::kExpAvgSqPrefix, &optimizer->exp_avg_sq}})
      for (auto& s : moment_shards(reg, optimizer->owned, *state, prefix,
                                   optimizer->sharded_over_data_parallel, ranks_))
        shards.push_back(std::move(s));
  }
  finalize_pending();  // an earlier asynchronous save completes first
  ckpt::SaveOptions options;
  options.async = c.async_save;
  options.keep_last = c.keep_last_checkpoints;
  writer_.save(ctx, c.save, progress.iteration, shards, state_json(optimizer, progress), options);
  last_saved_iteration_ = progress.iteration;
  log_ << "  " << (c.async_save ? "started asynchronous save of" : "saved")
       << " checkpoint at iteration " << progress.iteration << " to " << c.save << " ("
       << format_seconds(writer_.last_blocking_seconds()) << " s blocking)\n";
  log_.flush();
}

void Checkpointer::finalize_pending() {
  const bool was_async = writer_.pending();
  const int64_t published = writer_.finalize();
  if (was_async && published >= 0) {
    log_ << "  asynchronous save of iteration " << published << " complete ("
         << format_seconds(writer_.last_write_seconds()) << " s writing in the background)\n";
    log_.flush();
  }
}

bool Checkpointer::load(DeviceContext& ctx, model::ParameterRegistry& reg,
                        OptimizerStateView* optimizer, TrainingProgress& progress) {
  const CheckpointConfig& c = cfg_.checkpoint;
  if (c.load.empty()) return false;
  int64_t iteration = c.ckpt_step;
  if (iteration < 0) {
    const std::optional<int64_t> latest = ckpt::CheckpointReader::latest_iteration(c.load);
    if (!latest) {
      log_ << "> no checkpoint found in --load " << c.load << " ("
           << ckpt::kLatestFileName << " is missing); training from scratch\n";
      return false;
    }
    iteration = *latest;
  }
  ckpt::CheckpointReader reader(c.load, iteration);
  const nlohmann::json& state = reader.state();
  ckpt::check_model_config(state.at("model_config"), cfg_.model, reader.directory());
  if (state.contains("hf_config") && state["hf_config"].is_object())
    hf_config_ = state["hf_config"];

  // The vocabulary may be padded to a different multiple (other TP size / divisor).
  auto read_padded = [&](const ckpt::ShardedTensor& t, const std::string& name) {
    ckpt::ReadOptions options;
    options.allow_shape_mismatch = name == kWordEmbeddings || name == kOutputLayer;
    reader.read(ctx, t, options);
  };
  if (optimizer != nullptr && optimizer->master.defined()) {
    // Sharded master weights: this rank's pieces (the caller refreshes the compute weights).
    for (auto& t : moment_shards(reg, optimizer->owned, optimizer->master, ckpt::kModelPrefix,
                                 true))
      read_padded(t, t.key.substr(std::string(ckpt::kModelPrefix).size()));
  } else {
    // Every piece, replicas included (each replica loads its copy).
    for (model::Parameter& p : reg.parameters())
      for (const ckpt::ParameterPiece& piece : ckpt::pieces_of(p))
        read_padded({key_of(p.spec.name), p.spec.global_shape, piece.region,
                     piece_view(p.value, piece), true},
                    p.spec.name);
  }

  const bool finetune = c.finetune;
  if (!finetune && !c.no_load_optim && optimizer != nullptr) {
    SHARDLM_REQUIRE(state.at("optimizer").value("saved", false), ErrorKind::kInvalidConfig,
                    "checkpoint '" + reader.directory() +
                        "' holds no optimizer state (saved with --no-save-optim, or converted "
                        "from Hugging Face); pass --finetune to start a new run from its weights, "
                        "or --no-load-optim to keep its iteration with fresh optimizer state");
    // Moments of the vocabulary-padded tensors may be padded differently too.
    for (auto& t : moment_shards(reg, optimizer->owned, optimizer->exp_avg, ckpt::kExpAvgPrefix,
                                 true))
      read_padded(t, t.key.substr(std::string(ckpt::kExpAvgPrefix).size()));
    for (auto& t : moment_shards(reg, optimizer->owned, optimizer->exp_avg_sq,
                                 ckpt::kExpAvgSqPrefix, true))
      read_padded(t, t.key.substr(std::string(ckpt::kExpAvgSqPrefix).size()));
    optimizer->steps = state["optimizer"].at("steps").get<int64_t>();
  }
  if (!finetune) {
    progress.iteration = state.at("iteration").get<int64_t>();
    progress.consumed_samples = state.at("consumed_samples").get<int64_t>();
    progress.eval_cursor = state.at("data_sampler").value("eval_cursor", int64_t{0});
    progress.skipped_iterations = state.value("skipped_iterations", int64_t{0});
    progress.nan_iterations = state.value("nan_iterations", int64_t{0});
    if (!c.no_load_rng) progress.seed = state.at("rng").at("seed").get<uint64_t>();
    const nlohmann::json& scaler = state.value("loss_scaler", nlohmann::json(nullptr));
    if (scaler.is_object()) {
      progress.has_loss_scaler = true;
      progress.loss_scale = scaler.at("scale").get<double>();
      progress.loss_scale_growth_tracker = scaler.at("growth_tracker").get<int64_t>();
      progress.loss_scale_hysteresis_tracker = scaler.at("hysteresis_tracker").get<int64_t>();
    }
    const nlohmann::json& sched = state.at("lr_scheduler");
    const optim::LrScheduleConfig lr = cfg_.lr_schedule();
    if (sched.value("max_lr", lr.max_lr) != lr.max_lr ||
        sched.value("decay_steps", lr.decay_steps) != lr.decay_steps ||
        sched.value("warmup_steps", lr.warmup_steps) != lr.warmup_steps)
      log_ << "> note: the learning-rate schedule flags differ from the checkpoint's; using "
              "the flags\n";
  }
  last_saved_iteration_ = finetune ? -1 : progress.iteration;
  log_ << "> loaded checkpoint " << reader.directory() << " (iteration " << iteration << ")"
       << (finetune ? ", weights only (--finetune): starting at iteration 0" : "")
       << (!finetune && (c.no_load_optim || optimizer == nullptr) ? ", without optimizer state"
                                                                   : "")
       << "\n";
  log_.flush();
  return true;
}

bool Checkpointer::after_step(DeviceContext& ctx, const model::ParameterRegistry& reg,
                              const OptimizerStateView* optimizer, const TrainingProgress& progress) {
  const CheckpointConfig& c = cfg_.checkpoint;
  const bool can_save = !c.save.empty();
  if (can_save && c.save_interval > 0 && progress.iteration % c.save_interval == 0)
    save(ctx, reg, optimizer, progress);

  std::string reason;
  const bool signal = c.exit_signal_handler && any_rank(comm_, ctx, exit_signal_received());
  if (signal) reason = "exit signal received";
  if (reason.empty() && c.exit_interval > 0 && progress.iteration % c.exit_interval == 0)
    reason = "--exit-interval " + std::to_string(c.exit_interval);
  if (reason.empty() && c.exit_duration_in_mins > 0) {
    const double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() / 60.0;
    if (any_rank(comm_, ctx, minutes > c.exit_duration_in_mins))
      reason = "--exit-duration-in-mins " + std::to_string(c.exit_duration_in_mins);
  }
  if (reason.empty()) return false;
  if (can_save && last_saved_iteration_ != progress.iteration)
    save(ctx, reg, optimizer, progress);
  finalize_pending();
  log_ << "> exiting at iteration " << progress.iteration << ": " << reason
       << (can_save ? " (checkpoint saved)" : "") << "\n";
  log_.flush();
  return true;
}

void Checkpointer::finish(DeviceContext& ctx, const model::ParameterRegistry& reg,
                          const OptimizerStateView* optimizer, const TrainingProgress& progress) {
  if (!cfg_.checkpoint.save.empty() && progress.iteration > 0 &&
      last_saved_iteration_ != progress.iteration)
    save(ctx, reg, optimizer, progress);
  finalize_pending();
}

}  // namespace shardlm::train
