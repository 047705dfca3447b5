// `shardlm train` from the outside: bad input exits with code 2 and ONE line naming the flag,
// the value and the fix; YAML configs hold the same keys and flags win; --help groups options.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/testing/run_command.h"

namespace {

using Result = shardlm::testing::CommandResult;  // output: stdout + stderr

Result run(const std::string& args) {
  return shardlm::testing::run_command(std::string(SHARDLM_BINARY_PATH) + " " + args + " 2>&1");
}

const std::string kTiny =
    "train --mock-data --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
    "--vocab-size 32 --micro-batch-size 2 --lr 1e-3 --train-iters 2 --log-interval 1 "
    "--eval-iters 1 --device cpu ";

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

void expect_usage_error(const std::string& args, const std::string& needle) {
  const Result r = run(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << args << "\n" << r.output;
  EXPECT_EQ(r.output.find("terminate"), std::string::npos);
}

TEST(TrainCli, TrainsATinyModel) {
  const Result r = run(kTiny);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("iteration        2/       2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("validation loss at iteration 2"), std::string::npos) << r.output;
}

// A flag that does nothing without another one trains as Megatron does (ignored), with a note.
TEST(TrainCli, RopeScalingFlagsWithoutUseRopeScalingGetANote) {
  const Result r = run(kTiny + "--position-embedding-type rope --rope-scaling-factor 32");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("note: --rope-scaling-factor has no effect without --use-rope-scaling"),
            std::string::npos)
      << r.output;
  const Result used =
      run(kTiny + "--position-embedding-type rope --use-rope-scaling --rope-scaling-factor 32");
  EXPECT_EQ(used.exit_code, 0) << used.output;
  EXPECT_EQ(used.output.find("note:"), std::string::npos) << used.output;
}

// Flags of Megatron launch scripts that ask for what ShardLM does anyway are accepted (values
// still checked), and --recompute-activations means --recompute-granularity selective.
TEST(TrainCli, MegatronCompatibilityFlags) {
  const Result r = run(kTiny +
                       "--use-mcore-models --use-flash-attn --accumulate-allreduce-grads-in-fp32 "
                       "--log-throughput --no-masked-softmax-fusion --no-bias-gelu-fusion "
                       "--no-bias-dropout-fusion --no-bias-swiglu-fusion --transformer-impl "
                       "transformer_engine --distributed-backend nccl");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_usage_error(kTiny + "--transformer-impl te", "--transformer-impl");
  expect_usage_error(kTiny + "--distributed-backend mpi", "--distributed-backend");
  const Result gloo = run(kTiny + "--distributed-backend gloo");  // one process: nothing to do
  EXPECT_EQ(gloo.exit_code, 0) << gloo.output;
  auto activations = [](const Result& x) {
    const size_t at = x.output.find("activations ");
    return at == std::string::npos ? std::string() : x.output.substr(at, 24);
  };
  // Big enough that selective recompute's saving shows in the plan's MiB.
  const std::string mid =
      "train --mock-data --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 "
      "--vocab-size 64 --micro-batch-size 4 --lr 1e-3 --train-iters 1 --eval-iters 0 --device cpu ";
  const Result shorthand = run(mid + "--recompute-activations");
  const Result selective = run(mid + "--recompute-granularity selective");
  const Result plain = run(mid);
  ASSERT_EQ(shorthand.exit_code, 0) << shorthand.output;
  ASSERT_FALSE(activations(plain).empty()) << plain.output;
  EXPECT_EQ(activations(shorthand), activations(selective));
  EXPECT_NE(activations(shorthand), activations(plain));
}

TEST(TrainCli, UnknownFlag) { expect_usage_error(kTiny + "--no-such-flag 3", "--no-such-flag"); }

TEST(TrainCli, MissingValue) { expect_usage_error(kTiny + "--num-layers", "--num-layers"); }

TEST(TrainCli, NonNumericValue) { expect_usage_error(kTiny + "--lr fast", "--lr"); }

TEST(TrainCli, NonPositiveSizes) {
  expect_usage_error(kTiny + "--num-layers 0", "--num-layers");
  expect_usage_error(kTiny + "--hidden-size -16", "--hidden-size");
  expect_usage_error(kTiny + "--micro-batch-size 0", "--micro-batch-size");
}

TEST(TrainCli, HiddenNotDivisibleByHeads) {
  expect_usage_error(kTiny + "--num-attention-heads 3",
                     "--hidden-size 16 is not divisible by --num-attention-heads 3");
}

TEST(TrainCli, GlobalBatchNotDivisible) {
  expect_usage_error(kTiny + "--global-batch-size 5",
                     "--global-batch-size 5 is not divisible by --micro-batch-size 2");
}

TEST(TrainCli, AttentionBackend) {
  // Accepted everywhere (no effect on the CPU's reference attention); Megatron's unfused/local
  // and unknown names are refused with the choices.
  const Result r = run(kTiny + "--attention-backend flash");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_usage_error(kTiny + "--attention-backend unfused",
                     "--attention-backend unfused: ShardLM has no unfused attention");
  expect_usage_error(kTiny + "--attention-backend te", "--attention-backend te is not one of");
}

// Megatron's MoE flags train (and log the load-balancing loss); what ShardLM cannot honour is
// refused in one line.
TEST(TrainCli, MixtureOfExpertsFlags) {
  const Result r = run(kTiny + "--num-experts 4 --moe-router-topk 2 --moe-ffn-hidden-size 24 "
                               "--moe-aux-loss-coeff 0.01 --moe-router-load-balancing-type aux_loss "
                               "--moe-token-dispatcher-type alltoall --moe-grouped-gemm");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("load_balancing_loss: "), std::string::npos) << r.output;
  // Token dropping trains from the flags (another loss than dropless: tokens were dropped).
  const Result dropping = run(kTiny + "--num-experts 4 --moe-router-topk 2 --moe-ffn-hidden-size 24 "
                                      "--moe-aux-loss-coeff 0.01 --moe-expert-capacity-factor 0.5 "
                                      "--moe-token-drop-policy position --moe-z-loss-coeff 1e-3 "
                                      "--moe-router-load-balancing-type seq_aux_loss "
                                      "--moe-router-topk-scaling-factor 1.5");
  EXPECT_EQ(dropping.exit_code, 0) << dropping.output;
  EXPECT_NE(dropping.output.find("load_balancing_loss: "), std::string::npos) << dropping.output;
  EXPECT_NE(dropping.output.find(" z_loss: "), std::string::npos) << dropping.output;
  expect_usage_error(kTiny + "--num-experts 4 --moe-expert-capacity-factor 1.0 "
                             "--moe-pad-expert-input-to-capacity",
                     "padding experts to their capacity is not implemented");
  expect_usage_error(kTiny + "--num-experts 4 --moe-token-drop-policy random",
                     "'random' is not a policy");
  expect_usage_error(kTiny + "--num-experts 4 --moe-router-load-balancing-type sinkhorn",
                     "'sinkhorn' is not implemented");
  expect_usage_error(kTiny + "--num-experts 4 --moe-router-topk 5",
                     "--moe-router-topk 5 must be between 1 and --num-experts 4");
}

// fp8 trains from Megatron's flags on the CPU (emulated) and says so; the delayed-scaling flags
// are accepted with a note; what cannot work is refused in one line naming the numbers.
TEST(TrainCli, Fp8Flags) {
  const std::string fp8 =
      "train --mock-data --num-layers 3 --hidden-size 32 --num-attention-heads 2 --seq-length 16 "
      "--vocab-size 32 --micro-batch-size 2 --train-iters 2 --lr 1e-3 --device cpu ";
  const Result r = run(fp8 + "--fp8-format hybrid --fp8-recipe tensorwise --fp8-margin 1 "
                             "--first-last-layers-bf16 --num-layers-at-end-in-bf16 0 "
                             "--fp8-amax-history-len 1024 --fp8-amax-compute-algo max");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("fp8 hybrid (E4M3 activations and weights, E5M2 gradients; tensorwise "
                          "scales, margin 1) in the transformer layers' linears of layers 1-2"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("--fp8-amax-history-len has no effect"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("iteration        2/       2"), std::string::npos) << r.output;
  expect_usage_error(fp8 + "--fp8-format e5m2", "'e5m2' is not e4m3 or hybrid");
  expect_usage_error(fp8 + "--fp8-format hybrid --fp8-recipe delayed",
                     "'delayed' is not available");
  expect_usage_error(kTiny + "--fp8-format e4m3",
                     "--fp8-format needs every fp8 GEMM dimension to be a multiple of 16");
}

// Llama 3.x RoPE scaling and linear interpolation train from the flags; without RoPE, or with
// bad parameters, one line names the flag.
TEST(TrainCli, RopeScalingFlags) {
  const std::string rope = kTiny + "--position-embedding-type rope ";
  const Result r = run(rope + "--use-rope-scaling --rope-scaling-factor 32 "
                              "--rope-scaling-original-max-position-embeddings 4 "
                              "--rotary-seq-len-interpolation-factor 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("iteration        2/       2"), std::string::npos) << r.output;
  expect_usage_error(kTiny + "--use-rope-scaling", "--position-embedding-type rope");
  expect_usage_error(rope + "--use-rope-scaling --rope-scaling-high-freq-factor 0.5",
                     "--rope-scaling-high-freq-factor");
  expect_usage_error(rope + "--rotary-seq-len-interpolation-factor 0",
                     "--rotary-seq-len-interpolation-factor");
}

TEST(TrainCli, SeqLengthBeyondPositions) {
  expect_usage_error(kTiny + "--max-position-embeddings 4",
                     "--seq-length 8 exceeds --max-position-embeddings 4");
}

TEST(TrainCli, MissingRequiredLearningRate) {
  const std::string no_lr =
      "train --mock-data --num-layers 1 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
      "--vocab-size 32 --micro-batch-size 2 --train-iters 2 --device cpu";
  expect_usage_error(no_lr, "--lr is required");
}

TEST(TrainCli, NoData) {
  std::string args = kTiny;
  args.replace(args.find("--mock-data"), 11, "");
  expect_usage_error(args, "--data-path");
}

// BERT end to end from text: preprocess --split-sentences with the committed WordPiece vocab,
// then --model-type bert logs lm loss and sop loss; without the split the binary head's error
// says what to do.
TEST(TrainCli, TrainsBertOnSentenceSplitText) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("shardlm_bert_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string vocab =
      std::string(SHARDLM_SOURCE_DIR) + "/tests/golden/data/bert/vocab-lowercase-8k.txt";
  const std::string corpus = std::string(SHARDLM_TEST_DATA_DIR) + "/corpus/moby_dick.jsonl";
  const std::string tok = " --tokenizer-type BertWordPieceLowerCase --vocab-file " + vocab;
  for (const char* split : {" --split-sentences", ""}) {
    const Result p = run("preprocess --input " + corpus + " --output-prefix " +
                         (dir / "moby").string() + tok + " --workers 2" + split);
    ASSERT_EQ(p.exit_code, 0) << p.output;
  }
  const std::string train = "train --model-type bert" + tok +
                            " --num-layers 1 --hidden-size 16 --num-attention-heads 2"
                            " --seq-length 32 --micro-batch-size 2 --lr 1e-3 --train-iters 2"
                            " --log-interval 1 --eval-iters 1 --eval-interval 2 --device cpu"
                            " --data-path ";
  Result r = run(train + (dir / "moby_text_sentence").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("sop loss:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("sop loss value:"), std::string::npos) << r.output;
  r = run(train + (dir / "moby_text_document").string());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--split-sentences"), std::string::npos) << r.output;
  r = run(train + (dir / "moby_text_document").string() + " --bert-no-binary-head");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("sop loss"), std::string::npos) << r.output;
  // inspect-data prints the same samples: [CLS] first, labels where masked, the segments.
  r = run("inspect-data --model-type bert --seq-length 32 --num-samples 3 --decode" + tok +
          " --data-path " + (dir / "moby_text_sentence").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count_lines(r.output), 3) << r.output;
  for (const char* key : {"\"tokens\": [2, ", "\"types\": [0, ", "\"labels\": [",
                          "\"length\": ", "\"sentence_order\": ", "\"text\": \"[CLS] "})
    EXPECT_NE(r.output.find(key), std::string::npos) << key << "\n" << r.output;
  r = run("inspect-data --model-type bert --seq-length 32 --data-path " +
          (dir / "moby_text_sentence").string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--tokenizer-type BertWordPieceLowerCase"), std::string::npos)
      << r.output;
  std::filesystem::remove_all(dir);
}

// T5 end to end from text: preprocess --split-sentences with the committed WordPiece vocab, then
// --model-type t5 with 100 sentinels trains and saves; without the sentinels the error says
// what to pass; a checkpoint records the encoder's layers.
TEST(TrainCli, TrainsT5OnSentenceSplitText) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("shardlm_t5_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string vocab =
      std::string(SHARDLM_SOURCE_DIR) + "/tests/golden/data/bert/vocab-lowercase-8k.txt";
  const std::string corpus = std::string(SHARDLM_TEST_DATA_DIR) + "/corpus/moby_dick.jsonl";
  const std::string tok = " --tokenizer-type BertWordPieceLowerCase --vocab-file " + vocab;
  const Result p = run("preprocess --input " + corpus + " --output-prefix " +
                       (dir / "moby").string() + tok + " --workers 2 --split-sentences");
  ASSERT_EQ(p.exit_code, 0) << p.output;
  const std::string train =
      "train --model-type t5" + tok +
      " --num-layers 1 --encoder-num-layers 2 --hidden-size 16 --num-attention-heads 2"
      " --encoder-seq-length 48 --decoder-seq-length 24 --micro-batch-size 2 --lr 1e-3"
      " --train-iters 3 --log-interval 1 --eval-iters 1 --eval-interval 3 --device cpu"
      " --data-path " + (dir / "moby_text_sentence").string();
  Result r = run(train + " --vocab-extra-ids 100 --save " + (dir / "ckpt").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("lm loss:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("validation loss"), std::string::npos) << r.output;
  r = run(train);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--vocab-extra-ids 100"), std::string::npos) << r.output;
  r = run("train --model-type t5 --num-layers 1 --hidden-size 16 --num-attention-heads 2"
          " --seq-length 16 --micro-batch-size 2 --train-iters 1 --mock-data --vocab-size 128 --lr 1e-3"
          " --device cpu");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--decoder-seq-length"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

TEST(TrainCli, UnreadableAndMalformedConfig) {
  expect_usage_error(kTiny + "--config /nonexistent/cfg.yaml", "/nonexistent/cfg.yaml");
  const auto dir = std::filesystem::temp_directory_path();
  const std::string bad = (dir / "shardlm_bad.yaml").string();
  std::ofstream(bad) << "num-layers: [1, 2\n";
  expect_usage_error(kTiny + "--config " + bad, "not valid YAML");
  const std::string unknown = (dir / "shardlm_unknown.yaml").string();
  std::ofstream(unknown) << "num-layerz: 2\n";
  expect_usage_error(kTiny + "--config " + unknown, "num-layerz");
}

TEST(TrainCli, YamlConfigWithFlagsWinning) {
  const auto path = (std::filesystem::temp_directory_path() / "shardlm_cfg.yaml").string();
  std::ofstream(path) << "num_layers: 1\nhidden-size: 16\nnum-attention-heads: 2\n"
                         "seq-length: 8\nvocab-size: 32\nmicro-batch-size: 2\nlr: 1.0e-3\n"
                         "train-iters: 3\nlog-interval: 1\neval-iters: 0\nmock-data: true\n"
                         "device: cpu\n";
  Result r = run("train --config " + path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("iteration        3/       3"), std::string::npos) << r.output;
  r = run("train --config " + path + " --train-iters 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("iteration        2/       2"), std::string::npos) << r.output;
}

TEST(TrainCli, HelpGroupsOptions) {
  Result r = run("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("train"), std::string::npos);
  r = run("train --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* g : {"Model", "Training", "Optimizer and learning rate", "Data",
                        "Logging and evaluation", "--num-layers", "--global-batch-size"})
    EXPECT_NE(r.output.find(g), std::string::npos) << g;
}

TEST(TrainCli, NoSubcommand) {
  const Result r = run("");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
