// `shardlm launch` from the outside: two CPU ranks (separate processes, socket communicator)
// train data-parallel (and as a 2-stage pipeline) and log the single-process losses; a rank
// killed mid-run or one that hangs makes the job exit non-zero within the timeout, naming the
// rank and the operation; environment/flag mismatches and bad launcher usage are one-line errors.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "tests/testing/run_command.h"

namespace {

using Result = shardlm::testing::CommandResult;  // output: stdout + stderr

// Runs `env_prefix shardlm args` (bounded by timeout(1) so a regression cannot hang the suite).
Result run(const std::string& args, const std::string& env_prefix = "") {
  return shardlm::testing::run_command(env_prefix + " timeout -k 5 120 " +
                                       std::string(SHARDLM_BINARY_PATH) + " " + args + " 2>&1");
}

const std::string kTrain =
    "train --mock-data --num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
    "--vocab-size 32 --micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --train-iters 6 "
    "--log-interval 1 --eval-interval 3 --eval-iters 1 --hidden-dropout 0.1 --seed 7 ";

std::vector<std::string> losses(const std::string& log) {
  std::vector<std::string> out;
  const std::regex re("(lm loss|lm loss value): ([0-9.E+-]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator();
       ++it) {
    out.push_back((*it)[2]);
  }
  return out;
}

// Same number of logged losses, each within 1e-5 relative (issue 5: layouts match one rank
// to 1e-5; the logs print 7 significant digits).
void expect_same_losses(const std::string& reference_log, const std::string& log) {
  const std::vector<std::string> a = losses(reference_log), b = losses(log);
  ASSERT_FALSE(a.empty()) << reference_log;
  ASSERT_EQ(a.size(), b.size()) << "reference:\n" << reference_log << "\nrun:\n" << log;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = std::stod(a[i]), y = std::stod(b[i]);
    EXPECT_LE(std::abs(x - y), 1e-5 * std::abs(x)) << "loss " << i << ": " << a[i] << " vs " << b[i];
  }
}

int count(const std::string& s, const std::string& needle) {
  int n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

TEST(LaunchCli, TwoCpuRanksTrainLikeOneProcess) {
  const Result single = run(kTrain + "--device cpu");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Result launched =
      run("launch --nproc-per-node 2 --master-port 0 --device cpu -- " + kTrain);
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_NE(launched.output.find("world of 2 ranks, communicator socket"), std::string::npos)
      << launched.output;
  // Only rank 0 logs: one line per iteration, two validations.
  EXPECT_EQ(count(launched.output, "\n iteration "), 6) << launched.output;
  EXPECT_EQ(losses(single.output).size(), 8u) << single.output;
  expect_same_losses(single.output, launched.output);
}

TEST(LaunchCli, FourCpuRanksTensorAndDataParallelTrainLikeOneProcess) {
  // TP 2 pads the vocabulary to a multiple of 64 x 2: the single process pads to 128 too.
  const Result single = run(kTrain + "--device cpu --make-vocab-size-divisible-by 128");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Result launched = run("launch --nproc-per-node 4 --master-port 0 --device cpu -- " +
                              kTrain + "--make-vocab-size-divisible-by 64 "
                              "--tensor-model-parallel-size 2 --sequence-parallel "
                              "--use-distributed-optimizer");
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  expect_same_losses(single.output, launched.output);
}

TEST(LaunchCli, TwoCpuRanksPipelineTrainLikeOneProcess) {
  // PP 2 over the socket communicator: one layer per stage, 2 micro-batches through 1F1B, the
  // tied embedding's gradient summed across the two processes, forward-only validation.
  const Result single = run(kTrain + "--device cpu");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Result launched = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- " +
                              kTrain + "--pipeline-model-parallel-size 2");
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_NE(launched.output.find("> pipeline: schedule 1f1b, 2 stages x 1 chunks, 2 micro-batches"),
            std::string::npos) << launched.output;
  EXPECT_EQ(count(launched.output, "\n iteration "), 6) << launched.output;
  expect_same_losses(single.output, launched.output);
}

TEST(LaunchCli, TwoCpuRanksExpertParallelTrainLikeOneProcess) {
  // EP 2 over the socket communicator: each process holds 2 of the 4 experts of every layer;
  // rows cross between the processes by all-to-all (batched sends and receives), the per-expert
  // counts by an int32 all-gather; the experts' gradients need no reduction (EDP 1).
  const std::string moe = "--num-experts 4 --moe-router-topk 2 --moe-aux-loss-coeff 0.01 ";
  const Result single = run(kTrain + moe + "--device cpu");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Result launched = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- " +
                              kTrain + moe + "--expert-model-parallel-size 2");
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_NE(launched.output.find("load_balancing_loss"), std::string::npos) << launched.output;
  expect_same_losses(single.output, launched.output);
}

// A free TCP port for a rendezvous (bound, read back, released).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ::close(fd);
  return ntohs(sa.sin_port);
}

// `bench` under the launcher: every rank steps, world rank 0 alone reports, with the layout, the
// per-rank rate and the whole model's FLOPs per token (the same as one process's, although each
// pipeline stage or tensor shard holds part of the parameters; the vocabulary, 256, is already a
// multiple of 128 x TP, so TP=2 pads it no further).
TEST(LaunchCli, BenchOnTwoRanksReportsOnceWithTheLayoutAndTheWholeModel) {
  const std::string bench =
      "bench --num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
      "--vocab-size 256 --micro-batch-size 2 --global-batch-size 4 --device cpu "
      "--bench-steps 2 --warmup-steps 1 ";
  const Result one = run(bench);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const std::regex flops("\"flops_per_token\":([0-9.e+]+)");
  std::smatch m_one;
  ASSERT_TRUE(std::regex_search(one.output, m_one, flops)) << one.output;
  for (const std::string layout : {"--tensor-model-parallel-size 2", "--pipeline-model-parallel-size 2",
                                   ""}) {
    const Result r = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- " + bench + layout);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(count(r.output, "RESULT {"), 1) << r.output;
    EXPECT_EQ(count(r.output, "> tokens/s "), 1) << r.output;
    EXPECT_NE(r.output.find("\"world_size\":2"), std::string::npos) << r.output;
    const std::string expected = layout.empty() ? "tp 1, pp 1, dp 2"
                                 : layout.find("tensor") != std::string::npos ? "tp 2, pp 1, dp 1"
                                                                               : "tp 1, pp 2, dp 1";
    EXPECT_NE(r.output.find("(rank 0 of 2: " + expected + ")"), std::string::npos) << r.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, flops)) << r.output;
    EXPECT_EQ(m[1].str(), m_one[1].str()) << layout;
  }
}

TEST(LaunchCli, TrainDiscoversRanksFromOpenMpiAndSlurmVariables) {
  const Result single = run(kTrain + "--device cpu");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  // Two `shardlm train` processes started by hand, as mpirun / srun would.
  const std::string bin = SHARDLM_BINARY_PATH;
  auto both = [&](const std::string& env0, const std::string& env1) {
    const std::string cmd = "sh -c '" + env1 + " timeout 120 " + bin + " " + kTrain +
                            "--device cpu >/dev/null 2>&1 & " + env0 + " timeout 120 " + bin +
                            " " + kTrain + "--device cpu; a=$?; wait $! || a=1; exit $a' 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string out;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
    const int status = pclose(pipe);
    return Result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
  };
  const std::string ompi_port = "MASTER_PORT=" + std::to_string(free_port());
  const Result mpi = both(
      ompi_port + " OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=0 OMPI_COMM_WORLD_LOCAL_SIZE=2",
      ompi_port + " OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=1 OMPI_COMM_WORLD_LOCAL_SIZE=2");
  ASSERT_EQ(mpi.exit_code, 0) << mpi.output;
  EXPECT_NE(mpi.output.find("from openmpi"), std::string::npos) << mpi.output;
  expect_same_losses(single.output, mpi.output);
  const std::string slurm = "MASTER_PORT=" + std::to_string(free_port()) +
                            " SLURM_NTASKS=2 SLURM_JOB_NODELIST=localhost";
  const Result srun = both(slurm + " SLURM_PROCID=0 SLURM_LOCALID=0",
                           slurm + " SLURM_PROCID=1 SLURM_LOCALID=1");
  ASSERT_EQ(srun.exit_code, 0) << srun.output;
  EXPECT_NE(srun.output.find("from slurm"), std::string::npos) << srun.output;
  expect_same_losses(single.output, srun.output);
}

TEST(LaunchCli, KilledRankFailsTheJobNamingIt) {
  // The default timeout (10 min) would be far beyond the test's limit: the survivors must fail
  // because rank 1's connection closed, not by timing out.
  const Result r = run("launch --nproc-per-node 2 --master-port 0 --device cpu -- " + kTrain,
                       "SHARDLM_TEST_KILL_RANK=1 SHARDLM_TEST_FAULT_AT_ITER=3");
  EXPECT_EQ(r.exit_code, 128 + 9) << r.output;
  EXPECT_NE(r.output.find("rank 1 (local rank 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("killed by signal 9"), std::string::npos) << r.output;
  // Rank 0's own error: the operation, and the dead rank.
  EXPECT_NE(r.output.find("rank 0 of 2:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1 (world rank 1) is dead"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("without a goodbye"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\\] [a-z_]+\\(.*\\) #[0-9]+ failed")))
      << r.output;
  // It died in iteration 3: two iterations were logged.
  EXPECT_EQ(count(r.output, "\n iteration "), 2) << r.output;
}

TEST(LaunchCli, HungRankTimesOutOnTheOthers) {
  // 0.05 min = 3 s deadline; the hung rank is stopped by the launcher afterwards.
  const Result r = run("launch --nproc-per-node 3 --master-port 0 --device cpu --grace-period 1 -- " +
                           kTrain + "--global-batch-size 6 --distributed-timeout-minutes 0.05",
                       "SHARDLM_TEST_HANG_RANK=2 SHARDLM_TEST_FAULT_AT_ITER=2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, -1) << r.output;
  EXPECT_NE(r.output.find("timed out after 3.000 s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(world ranks [2]) did not arrive"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("shardlm launch: failed: rank "), std::string::npos) << r.output;
  EXPECT_EQ(count(r.output, "\n iteration "), 1) << r.output;
}

TEST(LaunchCli, EnvironmentAndFlagsMustAgree) {
  // World of 3 cannot hold TP 2: a one-line configuration error from every rank, exit 2.
  const Result r = run("launch --nproc-per-node 3 --master-port 0 --device cpu -- " + kTrain +
                       "--tensor-model-parallel-size 2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--tensor-model-parallel-size 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("says world size 3"), std::string::npos) << r.output;
  // Directly under a torchrun-style environment too.
  const Result d = run(kTrain + "--device cpu --tensor-model-parallel-size 2",
                       "RANK=0 WORLD_SIZE=3 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=1");
  EXPECT_EQ(d.exit_code, 2) << d.output;
  EXPECT_NE(d.output.find("(torchrun) says world size 3"), std::string::npos) << d.output;
  const Result partial = run(kTrain + "--device cpu", "RANK=0");
  EXPECT_EQ(partial.exit_code, 2) << partial.output;
  EXPECT_NE(partial.output.find("WORLD_SIZE"), std::string::npos) << partial.output;
}

TEST(LaunchCli, UsageErrors) {
  Result r = run("launch --nproc-per-node 2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("command"), std::string::npos) << r.output;
  r = run("launch --nproc-per-node 0 -- train");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--nproc-per-node must be >= 1"), std::string::npos) << r.output;
  r = run("launch --nproc-per-node 2 --device cpu -- " + kTrain + "--device cuda");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("conflicts"), std::string::npos) << r.output;
  r = run("launch --nnodes 2 --node-rank 2 -- train");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--node-rank 2"), std::string::npos) << r.output;
}

}  // namespace
