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

TEST(PlanCli, JsonHoldsEveryLayout) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("plan_cli_" + std::to_string(::getpid()) + ".json"))
          .string();
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
// launch --device cpu` and exactly those flags.
TEST(PlanCli, RecommendedFlagsTrain) {
  const std::string model =
      "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 100 "
      "--global-batch-size 8 ";
  const Result p = run("plan " + model + "--num-gpus 2");
  ASSERT_EQ(p.exit_code, 0) << p.output;
  const std::string flags = line_starting(p.output, "> flags: ").substr(9);
  ASSERT_FALSE(flags.empty()) << p.output;
  const Result t = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- train " + model +
                       "--mock-data --lr 1e-3 --train-iters 2 --log-interval 1 --eval-iters 1 " +
                       flags);
  EXPECT_EQ(t.exit_code, 0) << flags << "\n" << t.output;
  EXPECT_NE(t.output.find("iteration        2/       2"), std::string::npos) << t.output;
}

}  // namespace
