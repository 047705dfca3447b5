// shardlm: the command-line entry point. Owns the CLI::App, maps errors to exit codes:
//   0 success · 1 runtime failure (I/O, corrupt data, out of memory, internal) ·
//   2 usage or configuration error (one line naming the flag, the value and the fix).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/cli/train_flags.h"

int main(int argc, char** argv) {
  using namespace shardlm;
  CLI::App app("ShardLM: train transformer language models the way Megatron-LM does, in C++", "shardlm");
  app.require_subcommand(1);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer("Run 'shardlm <command> --help' for the options of one command.");
  try {
    cli::register_train(app);
    cli::register_bench(app);
    cli::register_preprocess(app);
    cli::register_inspect_data(app);
    cli::register_convert(app);
    cli::register_launch(app);
    cli::register_plan(app);
    // Expand --config FILE for the train, bench and plan commands before parsing, so flags override
    // the file.
    std::vector<std::string> args(argv + 1, argv + argc);
    if (!args.empty() && (args[0] == "train" || args[0] == "bench" || args[0] == "plan")) {
      std::vector<std::string> tail(args.begin() + 1, args.end());
      tail = cli::expand_config_args(tail);
      args.resize(1);
      args.insert(args.end(), tail.begin(), tail.end());
    }
    std::reverse(args.begin(), args.end());  // CLI11 consumes a reversed vector
    app.parse(args);
    return 0;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "shardlm: error: " << e.what() << " (run 'shardlm --help' or 'shardlm <command> --help')\n";
    return 2;
  } catch (const cli::CommandExit& e) {
    return e.code();  // the command reported its failure already
  } catch (const Error& e) {
    std::cerr << "shardlm: " << error_kind_name(e.kind()) << ": " << e.what() << "\n";
    return e.kind() == ErrorKind::kInvalidConfig ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "shardlm: internal error: " << e.what() << "\n";
    return 1;
  }
}
