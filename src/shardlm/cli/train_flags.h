// The one table mapping Megatron-LM flag names onto TrainConfig (DESIGN §7, §8.10), grouped as
// `shardlm train --help` shows them. YAML config files use the same keys (with or without the
// leading dashes, '-' or '_'); flags given on the command line win over the file.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "shardlm/train/train_config.h"

namespace CLI {
class App;
}

namespace shardlm::cli {

// Adds every train flag to `cmd`, bound to fields of `cfg` (which must outlive parsing).
void add_train_flags(CLI::App& cmd, train::TrainConfig& cfg);

// Writes one "shardlm: note: ..." line to `out` for each flag that was given but has no effect
// with the others, as Megatron-LM silently ignores them (e.g. --rope-scaling-factor without
// --use-rope-scaling). Rank 0 calls it.
void note_ignored_flags(const CLI::App& cmd, const train::TrainConfig& cfg, std::ostream& out);

// Reads a YAML config and returns it as command-line arguments ("--key", "value", ...), so the
// one flag table also parses config files. Unknown keys are rejected by the caller's parser.
// Throws Error(kInvalidConfig) for unreadable or malformed files, naming the file and the fix.
std::vector<std::string> yaml_config_to_args(const std::string& path);

// Given argv after the subcommand, expands `--config FILE` (or --config=FILE) in place: the
// file's arguments go first, so explicit flags (later) override them.
std::vector<std::string> expand_config_args(const std::vector<std::string>& args);

}  // namespace shardlm::cli
