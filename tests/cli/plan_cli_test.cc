// `shardlm plan` from the outside: the ranked table, the best layout's flags and launch line,
// the JSON of every layout, exit 1 with the smallest need when nothing fits, exit 2 with one line
// for a bad request. And the flags it recommends are ones `shardlm train` accepts and runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/testing/run_command.h"

namespace {

using Result = shardlm::testing::CommandResult;  // output: stdout + stderr

Result run(const std::string& args) {
  return shardlm::testing::run_command(std::string(SHARDLM_BINARY_PATH) + " " + args + " 2>&1");
}

const std::string k1_3B =
    "plan --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 "
    "--max-position-embeddings 2048 --vocab-size 50257 --global-batch-size 256 --bf16 ";

// A per-process path in the temporary directory: stem + pid + extension.
std::string temp_file(const std::string& stem, const std::string& extension) {
  return (std::filesystem::temp_directory_path() / (stem + std::to_string(::getpid()) + extension))
      .string();
}

// `args --config FILE` with a YAML file holding `yaml`.
Result run_with_config(const std::string& args, const std::string& yaml) {
  const std::string path = temp_file("plan_cli_", ".yaml");
  std::ofstream(path) << yaml;
  const Result r = run(args + "--config " + path);
  std::filesystem::remove(path);
  return r;
}

std::string line_starting(const std::string& output, const std::string& prefix) {
  const size_t at = output.find("\n" + prefix);
  if (at == std::string::npos) return "";
  const size_t end = output.find('\n', at + 1);
  return output.substr(at + 1, end - at - 1);
}

TEST(PlanCli, RanksLayoutsAndPrintsTheBestOnesFlags) {
  const Result r = run(k1_3B + "--num-gpus 8 --top 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1,315,819,520 parameters, 8 GPUs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("> best: TP 1 x PP 1 x DP 8"), std::string::npos) << r.output;
  const std::string flags = line_starting(r.output, "> flags: ");
  EXPECT_NE(flags.find("--use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather"),
            std::string::npos)
      << r.output;
  EXPECT_NE(line_starting(r.output, "> run:").find("shardlm launch --nproc-per-node 8 -- train"),
            std::string::npos)
      << r.output;
  // --top 5: five rows under the header.
  int rows = 0;
  for (int i = 1; i <= 6; ++i)
    rows += r.output.find("\n" + std::string(i < 10 ? "   " : "  ") + std::to_string(i) + " ") !=
            std::string::npos;
  EXPECT_EQ(rows, 5) << r.output;
}

TEST(PlanCli, MultiNodeLaunchLineAndFixedFlags) {
  const Result r = run(k1_3B + "--num-gpus 16 --tensor-model-parallel-size 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--nproc-per-node 8 --nnodes 2 --node-rank R --master-addr HOST"),
            std::string::npos)
      << r.output;
  EXPECT_NE(line_starting(r.output, "> flags: ").find("--tensor-model-parallel-size 2 "),
            std::string::npos)
      << r.output;
}

TEST(PlanCli, GivenRecomputationIsKept) {
  const Result r = run(k1_3B + "--num-gpus 1 --recompute-granularity full --recompute-method block "
                               "--recompute-num-layers 6");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(line_starting(r.output, "> flags: ")
                .find("--recompute-granularity full --recompute-method block "
                      "--recompute-num-layers 6"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("recompute full block 6"), std::string::npos) << r.output;
}

// Flags that fix a choice keep their value, including off, and a --config file counts as given.
TEST(PlanCli, GivenFlagsAndConfigFilesFixTheirChoice) {
  const Result act = run(k1_3B + "--num-gpus 8 --recompute-activations");
  ASSERT_EQ(act.exit_code, 0) << act.output;
  EXPECT_NE(line_starting(act.output, "> flags: ").find("--recompute-granularity selective"),
            std::string::npos)
      << act.output;
  const Result sp = run(k1_3B + "--num-gpus 8 --tensor-model-parallel-size 2 --sequence-parallel=false");
  ASSERT_EQ(sp.exit_code, 0) << sp.output;
  EXPECT_EQ(line_starting(sp.output, "> flags: ").find("--sequence-parallel"), std::string::npos)
      << sp.output;
  const Result file = run_with_config(k1_3B + "--num-gpus 8 ",
                                      "tensor-model-parallel-size: 4\nmicro-batch-size: 2\n");
  ASSERT_EQ(file.exit_code, 0) << file.output;
  EXPECT_NE(line_starting(file.output, "> flags: ")
                .find("--tensor-model-parallel-size 4 --pipeline-model-parallel-size 1 "
                      "--micro-batch-size 2"),
            std::string::npos)
      << file.output;
  // A fixed layout that cannot be: exit 2, one line naming the flag.
  const Result big = run(k1_3B + "--num-gpus 8 --tensor-model-parallel-size 16");
  EXPECT_EQ(big.exit_code, 2) << big.output;
  EXPECT_NE(big.output.find("--tensor-model-parallel-size 16"), std::string::npos) << big.output;
  // Nothing fits because of what was fixed: the message says so.
  const Result pinned = run(
      "plan --num-layers 40 --hidden-size 5120 --num-attention-heads 40 --seq-length 4096 "
      "--max-position-embeddings 4096 --vocab-size 32000 --bf16 --global-batch-size 128 "
      "--num-gpus 8 --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1");
  EXPECT_EQ(pinned.exit_code, 1) << pinned.output;
  EXPECT_NE(pinned.output.find("or drop a fixed layout flag (--tensor-model-parallel-size, "
                               "--pipeline-model-parallel-size)"),
            std::string::npos)
      << pinned.output;
}

// A long sequence (Llama-3-8B's shape, 32,768 tokens): context parallelism in the best flags,
// the table and the JSON; --context-parallel-size given (1 included, or in a --config file) is
// kept.
TEST(PlanCli, ContextParallelForALongSequence) {
  const std::string llama =
      "plan --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --group-query-attention "
      "--num-query-groups 8 --swiglu --ffn-hidden-size 14336 --position-embedding-type rope "
      "--seq-length 32768 --max-position-embeddings 32768 --vocab-size 128256 --bf16 "
      "--global-batch-size 16 --num-gpus 8 ";
  const std::string json = temp_file("plan_cli_cp", ".json");
  const Result r = run(llama + "--json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(line_starting(r.output, "> flags: ").find("--context-parallel-size "), std::string::npos)
      << r.output;
  EXPECT_NE(line_starting(r.output, "> run:").find("--context-parallel-size "), std::string::npos)
      << r.output;
  EXPECT_NE(line_starting(r.output, "> best: ").find(" x CP "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CP comm s"), std::string::npos) << r.output;
  std::ifstream f(json);
  const nlohmann::json j = nlohmann::json::parse(f);
  std::filesystem::remove(json);
  const nlohmann::json& best = j["candidates"][0];
  EXPECT_GT(best["cp"].get<int>(), 1);
  EXPECT_GT(best["cp_comm_s"].get<double>(), 0);
  EXPECT_EQ(best["tp"].get<int>() * best["cp"].get<int>() * best["pp"].get<int>() *
                best["dp"].get<int>(),
            8);

  const Result off = run(llama + "--context-parallel-size 1");
  ASSERT_EQ(off.exit_code, 0) << off.output;
  EXPECT_EQ(off.output.find("--context-parallel-size"), std::string::npos) << off.output;
  EXPECT_EQ(line_starting(off.output, "> best: ").find(" x CP "), std::string::npos) << off.output;
  const Result file = run_with_config(llama, "context-parallel-size: 4\n");
  ASSERT_EQ(file.exit_code, 0) << file.output;
  EXPECT_NE(line_starting(file.output, "> flags: ").find("--context-parallel-size 4 "),
            std::string::npos)
      << file.output;
  // Nothing fits with CP fixed off: the message names the flag to drop.
  const Result pinned = run(llama + "--context-parallel-size 1 --gpu-memory-gib 20");
  EXPECT_EQ(pinned.exit_code, 1) << pinned.output;
  EXPECT_NE(pinned.output.find("or drop a fixed layout flag (--context-parallel-size)"),
            std::string::npos)
      << pinned.output;
}

TEST(PlanCli, JsonHoldsEveryLayout) {
  const std::string path = temp_file("plan_cli_", ".json");
  const Result r = run(k1_3B + "--num-gpus 4 --json " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream f(path);
  const nlohmann::json j = nlohmann::json::parse(f);
  std::filesystem::remove(path);
  EXPECT_EQ(j["parameters"].get<int64_t>(), 1315819520);
  ASSERT_GT(j["candidates"].size(), 10u);
  const nlohmann::json& best = j["candidates"][0];
  EXPECT_TRUE(best["fits"].get<bool>());
  EXPECT_GT(best["tokens_per_s_per_gpu"].get<double>(), 0);
  EXPECT_EQ(best["tp"].get<int>() * best["pp"].get<int>() * best["dp"].get<int>(), 4);
}

TEST(PlanCli, NothingFitsExitsOneWithTheSmallestNeed) {
  const Result r = run(k1_3B + "--num-gpus 1 --gpu-memory-gib 16");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no layout fits 16.0 GiB per GPU: the smallest, TP 1 x PP 1 x DP 1"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("does not fit"), std::string::npos) << r.output;
}

TEST(PlanCli, BadRequestsExitTwoWithOneLine) {
  for (const std::string& args :
       {std::string("plan --num-layers 2 --hidden-size 64 --num-attention-heads 4 "
                    "--seq-length 32 --vocab-size 100 --num-gpus 2"),  // no --global-batch-size
        k1_3B + "--num-gpus 12 --gpus-per-node 8", k1_3B}) {            // 12 GPUs; no --num-gpus
    const Result r = run(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << args << "\n" << r.output;
  }
}

// The recommended flags train: a tiny model planned for 2 CPU "GPUs", then run with `shardlm
// launch --device cpu` and exactly those flags; so do an interleaved-pipeline, an uneven-stage,
// a block-recompute and a context-parallel layout picked from the JSON.
TEST(PlanCli, RecommendedFlagsTrain) {
  const std::string model =
      "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 100 "
      "--global-batch-size 8 ";
  const std::string json = temp_file("plan_cli_t", ".json");
  const Result p = run("plan " + model + "--num-gpus 2 --json " + json);
  ASSERT_EQ(p.exit_code, 0) << p.output;
  std::vector<std::string> layouts = {line_starting(p.output, "> flags: ").substr(9)};
  std::ifstream f(json);
  const nlohmann::json j = nlohmann::json::parse(f);
  std::filesystem::remove(json);
  auto first = [&](auto pred) {
    for (const nlohmann::json& c : j["candidates"])
      if (pred(c)) {
        std::string s;
        for (const auto& x : c["flags"]) s += x.get<std::string>() + " ";
        return s;
      }
    return std::string();
  };
  layouts.push_back(first([](const nlohmann::json& c) { return c["virtual_chunks"] == 2; }));
  layouts.push_back(first([](const nlohmann::json& c) { return c["last_stage_layers"] == 1; }));
  layouts.push_back(first([](const nlohmann::json& c) {
    return c["recompute"].get<std::string>().rfind("full block", 0) == 0 && c["dp"] == 2;
  }));
  layouts.push_back(first([](const nlohmann::json& c) { return c["cp"] == 2; }));
  for (const std::string& flags : layouts) {
    ASSERT_FALSE(flags.empty()) << p.output;
    const Result t = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- train " +
                         model + "--mock-data --lr 1e-3 --train-iters 2 --log-interval 1 "
                         "--eval-iters 1 " + flags);
    EXPECT_EQ(t.exit_code, 0) << flags << "\n" << t.output;
    EXPECT_NE(t.output.find("iteration        2/       2"), std::string::npos) << flags << "\n"
                                                                              << t.output;
  }
}

}  // namespace
