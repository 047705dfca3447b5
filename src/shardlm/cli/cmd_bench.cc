// `shardlm bench`: time N training steps of a config (same flags as `train`) on synthetic
// tokens and print tokens/s, model TFLOP/s, MFU, peak memory and the time from process start to
// the first completed step, with the FLOP formula (train/metrics.h) shared with the PyTorch
// baseline. `--profile-ops` adds a per-op time breakdown of a few extra steps (timed with CUDA
// events on the GPU; the timed steps run without it). One "RESULT {json}" line at the end, as
// ../shared/bench/torch_gpt_bench.py prints, so bench/ scripts can tabulate both.
//
// Under a launcher (`shardlm launch --nproc-per-node N -- bench ...`, torchrun, srun, mpirun)
// every rank runs the steps on its part of the layout (cli/distributed_run.h) and world rank 0
// reports: tokens/s of the whole job and per GPU, MFU per GPU, its own memory (per GPU), and the
// layout (tp, pp, dp). The FLOPs per token count the whole model whatever the layout.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/cli/distributed_run.h"
#include "shardlm/dist/launch_env.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/cli/train_flags.h"
#include "shardlm/ops/device_queries.h"
#include "shardlm/ops/op_profile.h"
#include "shardlm/train/metrics.h"
#include "shardlm/train/trainer.h"

namespace shardlm::cli {

namespace {

struct BenchOptions {
  int64_t steps = 20;
  int64_t warmup = 5;
  bool profile_ops = false;
  int64_t profile_steps = 3;
  double peak_tflops = 989.0;
  std::string result_jsonl;
  std::string label = "shardlm";
};

// Seconds since this process started (Linux: /proc/self/stat field 22 vs /proc/uptime), so
// "time to first step" includes everything from exec on, as a user experiences it. -1 when
// unavailable.
double seconds_since_process_start() {
  std::ifstream stat("/proc/self/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t close = content.rfind(')');  // the command name may hold spaces
  std::ifstream uptime_file("/proc/uptime");
  double uptime = -1;
  if (close == std::string::npos || !(uptime_file >> uptime)) return -1;
  std::istringstream rest(content.substr(close + 2));
  std::string field;
  // Fields after the name start at 3 (state); starttime is field 22.
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    if (i == 22) {
      const double ticks = std::stod(field);
      return uptime - ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  return -1;
}

double elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
      .count();
}

// rank: null for a single-process run.
void run_bench(train::TrainConfig cfg, const BenchOptions& opt, dist::RankContext* rank) {
  SHARDLM_REQUIRE(opt.steps > 0 && opt.warmup >= 1, ErrorKind::kInvalidConfig,
                  "--bench-steps must be > 0 and --warmup-steps >= 1 (the first step includes "
                  "one-time setup and is never timed)");
  cfg.data.mock_data = cfg.data.mock_data || cfg.data.data_path.empty();
  cfg.logging.eval_iters = 0;
  cfg.logging.log_interval = 1 << 30;
  if (cfg.optimizer.lr < 0) cfg.optimizer.lr = 3e-4;
  cfg.train_iters = opt.warmup + opt.steps + (opt.profile_ops ? opt.profile_steps : 0);

  std::unique_ptr<train::Trainer> owned =
      rank != nullptr ? std::make_unique<train::Trainer>(cfg, *rank, std::cout)
                      : std::make_unique<train::Trainer>(cfg, std::cout);
  train::Trainer& trainer = *owned;
  DeviceContext& ctx = trainer.device();
  const train::TrainConfig& c = trainer.config();
  const int world = rank != nullptr ? rank->world().size() : 1;
  const bool report = rank == nullptr || rank->world().rank() == 0;

  using Clock = std::chrono::steady_clock;
  trainer.train_step();
  ops::synchronize(ctx);
  const double first_step_s = seconds_since_process_start();
  for (int64_t i = 1; i < opt.warmup; ++i) trainer.train_step();
  ops::synchronize(ctx);

  std::vector<double> step_ms;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < opt.steps; ++i) {
    const auto s0 = Clock::now();
    trainer.train_step();  // reads back the loss and grad norm: each step ends synchronised
    step_ms.push_back(elapsed_ms(s0));
  }
  ops::synchronize(ctx);
  const double wall_ms = elapsed_ms(t0);
  const double final_loss = trainer.history().back().loss;

  // The whole model's parameters (global shapes), not this rank's pipeline stage.
  model::ParameterRegistry whole_model;
  model::GPTModel(c.model).register_parameters(whole_model);
  const train::ModelFlops flops = train::model_flops(whole_model, c.model);
  const int64_t tokens_per_step =
      c.micro_batch_size * c.num_microbatches() * c.data_parallel_size * c.model.seq_length;
  const double tokens_per_s = static_cast<double>(tokens_per_step * opt.steps) * 1000.0 / wall_ms;
  const double model_tflops = flops.flops_per_token * tokens_per_s / 1e12;
  const double mfu = model_tflops / world / opt.peak_tflops;  // per GPU
  std::sort(step_ms.begin(), step_ms.end());
  const double median_ms = step_ms[step_ms.size() / 2];

  // GPU: device memory in use (allocations are planned and made once, so this is the peak).
  // CPU: the process's peak resident set (system-wide figures are meaningless there).
  size_t used = 0, allocated = 0;
  if (ctx.device().is_cuda()) {
    used = ops::device_memory(ctx).used_bytes();
    allocated = used > trainer.device_bytes_at_start() ? used - trainer.device_bytes_at_start() : 0;
  } else {
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    used = allocated = static_cast<size_t>(usage.ru_maxrss) * 1024;
  }

  std::string profile_table;
  nlohmann::json profile_rows = nlohmann::json::array();
  if (opt.profile_ops) {
    auto profile = ops::OpProfile::create(ctx);
    const auto p0 = Clock::now();
    for (int64_t i = 0; i < opt.profile_steps; ++i) trainer.train_step();
    profile->collect();
    const double profiled_wall = elapsed_ms(p0);
    profile_table = profile->format_table(static_cast<double>(opt.profile_steps), profiled_wall);
    for (const ops::OpProfileRow& row : profile->rows())
      profile_rows.push_back({{"op", row.name},
                              {"calls", row.calls},
                              {"ms_per_step", row.total_ms / opt.profile_steps}});
  }

  if (!report) return;
  std::cout << "> bench: " << opt.steps << " timed steps after " << opt.warmup << " warm-up, "
            << tokens_per_step << " tokens/step on " << ctx.device().to_string()
            << (world > 1 ? " (rank 0 of " + std::to_string(world) + ": tp " +
                                std::to_string(rank->layout().tp()) + ", pp " +
                                std::to_string(rank->layout().pp()) +
                                (rank->layout().cp() > 1
                                     ? ", cp " + std::to_string(rank->layout().cp())
                                     : std::string()) +
                                ", dp " +
                                std::to_string(rank->layout().dp()) + ")"
                          : std::string())
            << "\n"
            << "> " << train::model_flops_formula(c.model) << "\n"
            << "> parameters " << flops.parameters << ", non-embedding " << flops.non_embedding
            << ", flops/token " << flops.flops_per_token << "\n";
  char line[512];
  std::snprintf(line, sizeof(line),
                "> tokens/s %.0f (%.0f per rank) | step ms median %.2f (wall mean %.2f) | model "
                "TFLOP/s %.1f per rank | "
                "MFU %.1f%% of %.0f TFLOP/s | memory in use %s (%s allocated by the run, %s "
                "planned) | first step done %.2f s after process start | loss %.4f\n",
                tokens_per_s, tokens_per_s / world, median_ms, wall_ms / opt.steps,
                model_tflops / world, 100 * mfu,
                opt.peak_tflops, train::format_bytes(used).c_str(),
                train::format_bytes(allocated).c_str(),
                train::format_bytes(trainer.memory_plan().total()).c_str(), first_step_s,
                final_loss);
  std::cout << line;
  if (!profile_table.empty())
    std::cout << "> per-op time over " << opt.profile_steps << " profiled steps:\n"
              << profile_table;

  nlohmann::json result = {
      {"kind", "train"}, {"system", opt.label}, {"device", ctx.device().to_string()},
      {"L", c.model.num_layers}, {"H", c.model.hidden_size},
      {"NH", c.model.num_attention_heads}, {"S", c.model.seq_length},
      {"micro_batch", c.micro_batch_size}, {"steps", opt.steps}, {"warmup", opt.warmup},
      {"precision", c.bf16 ? "bf16" : c.fp16 ? "fp16" : c.compute_dtype},
      {"n_params", flops.parameters}, {"n_nonemb", flops.non_embedding},
      {"flops_per_token", flops.flops_per_token}, {"step_ms_median", median_ms},
      {"step_ms_min", step_ms.front()}, {"step_ms_max", step_ms.back()},
      {"step_ms_wall_mean", wall_ms / opt.steps}, {"tokens_per_s_wall", tokens_per_s},
      {"tokens_per_s_median", tokens_per_step * 1000.0 / median_ms},
      {"model_tflops_wall", model_tflops},
      {"mfu_989", model_tflops / world * 1e12 / train::kH100PeakBf16Flops},
      {"world_size", world}, {"tokens_per_s_per_gpu", tokens_per_s / world},
      {"tp", rank != nullptr ? rank->layout().tp() : 1},
      {"pp", rank != nullptr ? rank->layout().pp() : 1},
      {"cp", rank != nullptr ? rank->layout().cp() : 1},
      {"dp", rank != nullptr ? rank->layout().dp() : 1},
      {"ep", rank != nullptr ? rank->layout().ep() : 1},
      {"peak_mem_in_use_GiB", used / 1073741824.0},
      {"peak_mem_allocated_GiB", allocated / 1073741824.0},
      {"planned_mem_GiB", trainer.memory_plan().total() / 1073741824.0},
      {"first_step_s", first_step_s}, {"loss_final", final_loss}};
  if (opt.profile_ops) result["op_profile"] = profile_rows;
  std::cout << "RESULT " << result.dump() << "\n" << std::flush;
  if (!opt.result_jsonl.empty()) {
    std::ofstream out(opt.result_jsonl, std::ios::app);
    if (!out) throw Error(ErrorKind::kIo, "cannot append to --result-jsonl " + opt.result_jsonl);
    out << result.dump() << "\n";
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto cfg = std::make_shared<train::TrainConfig>();
  auto opt = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time training steps of a model config on synthetic tokens (tokens/s, MFU, memory)");
  add_train_flags(*cmd, *cfg);
  const char* g = "Benchmark";
  cmd->add_option("--bench-steps", opt->steps, "Timed steps")->group(g);
  cmd->add_option("--warmup-steps", opt->warmup, "Untimed steps first (>= 1)")->group(g);
  cmd->add_flag("--profile-ops", opt->profile_ops,
                "Then time every op over --profile-steps more steps and print a breakdown")
      ->group(g);
  cmd->add_option("--profile-steps", opt->profile_steps, "Steps profiled by --profile-ops")
      ->group(g);
  cmd->add_option("--peak-tflops", opt->peak_tflops, "Peak for MFU (H100 SXM dense bf16: 989)")
      ->group(g);
  cmd->add_option("--result-jsonl", opt->result_jsonl, "Append the RESULT json to this file")
      ->group(g);
  cmd->add_option("--label", opt->label, "Name of this system in the RESULT json")->group(g);
  cmd->callback([cmd, cfg, opt] {
    const dist::LaunchEnv env = dist::discover_launch_env(dist::read_process_environment());
    if (env.rank == 0) note_ignored_flags(*cmd, *cfg, std::cerr);
    if (env.world_size == 1) return run_bench(*cfg, *opt, nullptr);
    run_on_world(*cfg, env, [&](const train::TrainConfig& c, dist::RankContext& rc) {
      run_bench(c, *opt, &rc);
    });
  });
}

}  // namespace shardlm::cli
