// `shardlm train`: parse Megatron-style flags into a TrainConfig, then run the Trainer.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "shardlm/cli/commands.h"
#include "shardlm/cli/train_flags.h"
#include "shardlm/train/trainer.h"

namespace shardlm::cli {

void register_train(CLI::App& app) {
  auto cfg = std::make_shared<train::TrainConfig>();
  CLI::App* cmd = app.add_subcommand("train", "Train a GPT model (Megatron-LM flag names)");
  add_train_flags(*cmd, *cfg);
  cmd->callback([cfg] {
    train::Trainer trainer(*cfg, std::cout);
    trainer.train();
  });
}

}  // namespace shardlm::cli
