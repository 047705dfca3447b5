// Test helper: run a shell command (the shardlm binary, from the CLI tests) and keep its output.
#pragma once

#include <string>

namespace shardlm::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when a signal ended it
  std::string output;  // its stdout (append " 2>&1" to the command for stderr too)
  double seconds = 0;  // wall time
};

CommandResult run_command(const std::string& command);

}  // namespace shardlm::testing
