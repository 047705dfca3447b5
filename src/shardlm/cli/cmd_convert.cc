// `shardlm convert`: Hugging Face <-> ShardLM checkpoints (ckpt/hf_gpt2.h, ckpt/hf_llama.h,
// ckpt/hf_bert.h).
//
//   shardlm convert --from hf --model-type gpt2|llama|megatron-bert --input HF_DIR
//                   --output CKPT_DIR [--target-tensor-parallel-size N]
//                   [--make-vocab-size-divisible-by D]
//   shardlm convert --to hf --model-type gpt2|llama|megatron-bert --input CKPT_DIR
//                   --output HF_DIR [--ckpt-step N]
// The ShardLM side is a model-only checkpoint at iteration 0 (fine-tune it with
// `shardlm train --load CKPT_DIR --finetune` and the model flags this command prints). Our format
// reshards on load, so the checkpoint is written unsharded; --target-tensor-parallel-size only
// pads the vocabulary as a run with that TP size pads it (D x N) and checks that heads, query
// groups and the MLP split over N ranks, so the mistake shows here rather than at training.
// What an import approximates (HfModel::notes) is printed as "note: ..." lines.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "shardlm/base/error.h"
#include "shardlm/ckpt/hf_bert.h"
#include "shardlm/ckpt/hf_gpt2.h"
#include "shardlm/ckpt/hf_llama.h"
#include "shardlm/ckpt/model_config_json.h"
#include "shardlm/cli/commands.h"

namespace shardlm::cli {

namespace {
struct ConvertArgs {
  std::string from, to, model_type = "gpt2", input, output;
  int64_t make_vocab_size_divisible_by = 128;
  int64_t target_tensor_parallel_size = 1;
  int64_t ckpt_step = -1;
};

struct Family {
  const char* type;
  const char* title;
  ckpt::HfModel (*read)(const std::string&, int64_t, int64_t);
  void (*write)(const ckpt::HfModel&, const std::string&);
};
constexpr Family kFamilies[] = {
    {"gpt2", "GPT-2", ckpt::read_hf_gpt2, ckpt::write_hf_gpt2},
    {"llama", "Llama", ckpt::read_hf_llama, ckpt::write_hf_llama},
    {"megatron-bert", "Megatron-BERT", ckpt::read_hf_megatron_bert,
     ckpt::write_hf_megatron_bert},
};

const Family& family(const std::string& type) {
  for (const Family& f : kFamilies)
    if (type == f.type) return f;
  throw Error(ErrorKind::kInvalidConfig,
              "--model-type '" + type + "' is not supported (gpt2, llama or megatron-bert)");
}

void run_convert(const ConvertArgs& a) {
  const bool from_hf = a.from == "hf", to_hf = a.to == "hf";
  if (from_hf == to_hf)
    throw Error(ErrorKind::kInvalidConfig,
                "convert needs exactly one of --from hf (HF -> ShardLM) or --to hf (ShardLM -> HF)");
  if (!a.from.empty() && !from_hf)
    throw Error(ErrorKind::kInvalidConfig, "--from '" + a.from + "' is not supported (hf)");
  if (!a.to.empty() && !to_hf)
    throw Error(ErrorKind::kInvalidConfig, "--to '" + a.to + "' is not supported (hf)");
  const Family& f = family(a.model_type);
  const int64_t tp = a.target_tensor_parallel_size;
  if (tp <= 0)
    throw Error(ErrorKind::kInvalidConfig,
                "--target-tensor-parallel-size " + std::to_string(tp) + " must be positive");
  if (from_hf) {
    ckpt::HfModel m = [&] {
      try {
        return f.read(a.input, a.make_vocab_size_divisible_by, tp);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kInvalidConfig || tp == 1) throw;
        throw Error(ErrorKind::kInvalidConfig, "--target-tensor-parallel-size " +
                                                   std::to_string(tp) + ": " + e.what());
      }
    }();
    ckpt::write_model_checkpoint(m, a.output, std::string("hf ") + f.type + " " + a.input);
    std::cout << "converted Hugging Face " << f.title << " " << a.input << " -> " << a.output
              << " (iteration 0, " << m.tensors.size() << " tensors)\n"
              << "fine-tune with: shardlm train --load " << a.output << " --finetune "
              << ckpt::model_config_flags(m.config)
              << " --make-vocab-size-divisible-by " << a.make_vocab_size_divisible_by;
    if (tp > 1) std::cout << " --tensor-model-parallel-size " << tp;
    std::cout << " ...\n";
    for (const std::string& note : m.notes) std::cout << "note: " << note << "\n";
  } else {
    ckpt::HfModel m = ckpt::read_model_checkpoint(a.input, a.ckpt_step);
    f.write(m, a.output);
    std::cout << "converted ShardLM checkpoint " << a.input << " -> Hugging Face " << f.title
              << " " << a.output << " (config.json, model.safetensors)\n";
  }
}
}  // namespace

void register_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert checkpoints to and from Hugging Face");
  cmd->add_option("--from", args->from, "Source format: hf");
  cmd->add_option("--to", args->to, "Target format: hf");
  cmd->add_option("--model-type", args->model_type,
                  "Model family: gpt2, llama or megatron-bert");
  cmd->add_option("--input", args->input, "Input directory")->required();
  cmd->add_option("--output", args->output, "Output directory")->required();
  cmd->add_option("--make-vocab-size-divisible-by", args->make_vocab_size_divisible_by,
                  "Pad the vocabulary to a multiple of this (as training will)");
  cmd->add_option("--target-tensor-parallel-size", args->target_tensor_parallel_size,
                  "TP size the checkpoint will train with: pads the vocabulary for it and checks "
                  "the model splits (the checkpoint itself reshards on load)");
  cmd->add_option("--ckpt-step", args->ckpt_step, "Iteration to convert (default: latest)");
  cmd->callback([args] { run_convert(*args); });
}

}  // namespace shardlm::cli
