// Subcommands of the `shardlm` binary. Each registers its CLI11 subcommand (flags use
// Megatron-LM's names) and a callback that runs it. main() owns the CLI::App.
#pragma once

namespace CLI {
class App;
}

namespace shardlm::cli {

void register_train(CLI::App& app);       // cmd_train.cc
void register_bench(CLI::App& app);       // cmd_bench.cc
void register_preprocess(CLI::App& app);  // cmd_preprocess.cc (data layer)
void register_inspect_data(CLI::App& app);  // cmd_inspect_data.cc (data layer)

}  // namespace shardlm::cli
