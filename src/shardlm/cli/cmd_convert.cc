// `shardlm convert`: Hugging Face <-> ShardLM checkpoints (ckpt/hf_gpt2.h).
//
//   shardlm convert --from hf --model-type gpt2 --input HF_DIR --output CKPT_DIR
//   shardlm convert --to hf --model-type gpt2 --input CKPT_DIR --output HF_DIR [--ckpt-step N]
// The ShardLM side is a model-only checkpoint at iteration 0 (fine-tune it with
// `shardlm train --load CKPT_DIR --finetune` and the model flags this command prints). Our format
// reshards on load, so no target parallel sizes are needed here.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "shardlm/base/error.h"
#include "shardlm/ckpt/hf_gpt2.h"
#include "shardlm/ckpt/model_config_json.h"
#include "shardlm/cli/commands.h"

namespace shardlm::cli {

namespace {
struct ConvertArgs {
  std::string from, to, model_type = "gpt2", input, output;
  int64_t make_vocab_size_divisible_by = 128;
  int64_t ckpt_step = -1;
};

void run_convert(const ConvertArgs& a) {
  const bool from_hf = a.from == "hf", to_hf = a.to == "hf";
  if (from_hf == to_hf)
    throw Error(ErrorKind::kInvalidConfig,
                "convert needs exactly one of --from hf (HF -> ShardLM) or --to hf (ShardLM -> HF)");
  if (!a.from.empty() && !from_hf)
    throw Error(ErrorKind::kInvalidConfig, "--from '" + a.from + "' is not supported (hf)");
  if (!a.to.empty() && !to_hf)
    throw Error(ErrorKind::kInvalidConfig, "--to '" + a.to + "' is not supported (hf)");
  if (a.model_type != "gpt2")
    throw Error(ErrorKind::kInvalidConfig,
                "--model-type '" + a.model_type +
                    "' is not supported yet (gpt2; llama arrives with the Llama family)");
  if (from_hf) {
    ckpt::HfModel m = ckpt::read_hf_gpt2(a.input, a.make_vocab_size_divisible_by);
    ckpt::write_model_checkpoint(m, a.output, "hf gpt2 " + a.input);
    std::cout << "converted Hugging Face GPT-2 " << a.input << " -> " << a.output
              << " (iteration 0, " << m.tensors.size() << " tensors)\n"
              << "fine-tune with: shardlm train --load " << a.output << " --finetune "
              << ckpt::model_config_flags(m.config)
              << " --make-vocab-size-divisible-by " << a.make_vocab_size_divisible_by << " ...\n";
  } else {
    ckpt::HfModel m = ckpt::read_model_checkpoint(a.input, a.ckpt_step);
    ckpt::write_hf_gpt2(m, a.output);
    std::cout << "converted ShardLM checkpoint " << a.input << " -> Hugging Face GPT-2 "
              << a.output << " (config.json, model.safetensors)\n";
  }
}
}  // namespace

void register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert checkpoints to and from Hugging Face");
  cmd->add_option("--from", args->from, "Source format: hf");
  cmd->add_option("--to", args->to, "Target format: hf");
  cmd->add_option("--model-type", args->model_type, "Model family: gpt2");
  cmd->add_option("--input", args->input, "Input directory")->required();
  cmd->add_option("--output", args->output, "Output directory")->required();
  cmd->add_option("--make-vocab-size-divisible-by", args->make_vocab_size_divisible_by,
                  "Pad the vocabulary to a multiple of this (as training will)");
  cmd->add_option("--ckpt-step", args->ckpt_step, "Iteration to convert (default: latest)");
  cmd->callback([args] { run_convert(*args); });
}

}  // namespace shardlm::cli
