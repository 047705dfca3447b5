// Subcommands of the `shardlm` binary. Each registers its CLI11 subcommand (flags use
// Megatron-LM's names) and a callback that runs it. main() owns the CLI::App.
#pragma once

#include <exception>

namespace CLI {
class App;
}

namespace shardlm::cli {

void register_train(CLI::App& app);       // cmd_train.cc
void register_bench(CLI::App& app);       // cmd_bench.cc
void register_preprocess(CLI::App& app);  // cmd_preprocess.cc (data layer)
void register_inspect_data(CLI::App& app);  // cmd_inspect_data.cc (data layer)
void register_convert(CLI::App& app);     // cmd_convert.cc (Hugging Face <-> ShardLM)
void register_launch(CLI::App& app);      // cmd_launch.cc (torchrun-style local ranks)
void register_plan(CLI::App& app);        // cmd_plan.cc (layout planner)

// Thrown by a command that has already reported its failure and wants main() to exit with
// `code` (e.g. `launch` passing on a failed rank's exit code). main() prints nothing more.
class CommandExit : public std::exception {
 public:
  explicit CommandExit(int code) : code_(code) {}
  int code() const { return code_; }
  const char* what() const noexcept override { return "command exit"; }

 private:
  int code_;
};

}  // namespace shardlm::cli
