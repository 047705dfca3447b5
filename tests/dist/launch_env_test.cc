// Rank discovery from torchrun / SLURM / Open MPI environments (as maps), precedence, every
// incomplete or inconsistent environment, and Slurm hostlist expansion.
#include "shardlm/dist/launch_env.h"

#include <gtest/gtest.h>

#include "rank_threads.h"

namespace shardlm::dist {
namespace {

using testing::expect_error;
using Hosts = std::vector<std::string>;

TEST(LaunchEnv, NothingSetIsASingleProcess) {
  LaunchEnv e = discover_launch_env({});
  EXPECT_EQ(e.source, "single");
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(LaunchEnv, Torchrun) {
  LaunchEnv e = discover_launch_env({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                     {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "node7"},
                                     {"MASTER_PORT", "6000"}});
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "node7");
  EXPECT_EQ(e.master_port, 6000);
  EXPECT_EQ(e.describe(), "rank 5 of 8 (local 1) from torchrun, master node7:6000");
}

TEST(LaunchEnv, TorchrunWinsOverSlurmAndMpi) {
  LaunchEnv e = discover_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"SLURM_PROCID", "3"},
                                     {"SLURM_NTASKS", "4"}, {"OMPI_COMM_WORLD_RANK", "2"}});
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 0);
}

TEST(LaunchEnv, TorchrunIncompleteOrInconsistent) {
  expect_error([] { discover_launch_env({{"RANK", "1"}}); }, ErrorKind::kInvalidConfig,
               {"torchrun", "RANK set but WORLD_SIZE missing"});
  expect_error([] { discover_launch_env({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}}); },
               ErrorKind::kInvalidConfig, {"MASTER_ADDR, MASTER_PORT missing"});
  expect_error(
      [] {
        discover_launch_env({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                             {"MASTER_PORT", "1"}});
      },
      ErrorKind::kInvalidConfig, {"LOCAL_RANK is missing"});
  expect_error(
      [] {
        discover_launch_env({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"},
                             {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
      },
      ErrorKind::kInvalidConfig, {"RANK=2 is outside [0, WORLD_SIZE=2)"});
  expect_error([] { discover_launch_env({{"RANK", "x1"}, {"WORLD_SIZE", "2"}}); },
               ErrorKind::kInvalidConfig, {"RANK='x1' is not an integer"});
  expect_error([] { discover_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "0"}}); },
               ErrorKind::kInvalidConfig, {"WORLD_SIZE=0 must be >= 1"});
  expect_error(
      [] {
        discover_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"},
                             {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
      },
      ErrorKind::kInvalidConfig, {"MASTER_PORT=70000"});
  expect_error(
      [] {
        discover_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"},
                             {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
      },
      ErrorKind::kInvalidConfig, {"local rank 2 is outside [0, 2)"});
}

TEST(LaunchEnv, Slurm) {
  LaunchEnv e = discover_launch_env({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "8"},
                                     {"SLURM_LOCALID", "2"}, {"SLURM_NTASKS_PER_NODE", "4(x2)"},
                                     {"SLURM_JOB_NODELIST", "gpu-[07-08]"},
                                     {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(e.source, "slurm");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "gpu-07");
  EXPECT_EQ(e.master_port, 20000 + 123456 % 20000);
  // MASTER_ADDR / MASTER_PORT override; SLURM_NODELIST and SLURM_NPROCS are accepted.
  LaunchEnv f = discover_launch_env({{"SLURM_PROCID", "0"}, {"SLURM_NPROCS", "2"},
                                     {"SLURM_LOCALID", "0"}, {"SLURM_NODELIST", "a,b"},
                                     {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(f.world_size, 2);
  EXPECT_EQ(f.master_addr, "10.0.0.1");
  EXPECT_EQ(f.master_port, 1234);
  LaunchEnv g = discover_launch_env({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"},
                                     {"SLURM_LOCALID", "1"}, {"SLURM_NODELIST", "n[3-4]"}});
  EXPECT_EQ(g.master_addr, "n3");
  EXPECT_EQ(g.master_port, 29500);
}

TEST(LaunchEnv, SlurmIncomplete) {
  expect_error([] { discover_launch_env({{"SLURM_PROCID", "0"}}); }, ErrorKind::kInvalidConfig,
               {"slurm", "SLURM_PROCID set but SLURM_NTASKS, SLURM_LOCALID missing", "srun"});
  expect_error(
      [] {
        discover_launch_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}});
      },
      ErrorKind::kInvalidConfig, {"SLURM_JOB_NODELIST", "MASTER_ADDR"});
  expect_error(
      [] {
        discover_launch_env({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
                             {"SLURM_NODELIST", "n1"}});
      },
      ErrorKind::kInvalidConfig, {"SLURM_PROCID=4 is outside [0, SLURM_NTASKS=4)"});
  expect_error(
      [] {
        discover_launch_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
                             {"SLURM_NODELIST", "n[1-"}});
      },
      ErrorKind::kInvalidConfig, {"Slurm node list 'n[1-'"});
}

TEST(LaunchEnv, OpenMpi) {
  LaunchEnv e = discover_launch_env({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                     {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(e.source, "openmpi");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.local_rank, 3);
  EXPECT_EQ(e.master_addr, "127.0.0.1");  // one node: loopback rendezvous
  expect_error(
      [] {
        discover_launch_env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                             {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
      },
      ErrorKind::kInvalidConfig, {"several nodes", "-x MASTER_ADDR"});
  expect_error([] { discover_launch_env({{"OMPI_COMM_WORLD_RANK", "0"}}); },
               ErrorKind::kInvalidConfig,
               {"OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK missing", "mpirun"});
}

TEST(SlurmHostlist, Expansion) {
  EXPECT_EQ(expand_slurm_hostlist("node[01-04,07],gpu3"),
            (Hosts{"node01", "node02", "node03", "node04", "node07", "gpu3"}));
  EXPECT_EQ(expand_slurm_hostlist("single"), (Hosts{"single"}));
  EXPECT_EQ(expand_slurm_hostlist("a1,b[9-11]"), (Hosts{"a1", "b9", "b10", "b11"}));
  EXPECT_EQ(expand_slurm_hostlist("r[1-2]n[1-2]"), (Hosts{"r1n1", "r1n2", "r2n1", "r2n2"}));
  EXPECT_EQ(expand_slurm_hostlist("x[008-010]-ib"), (Hosts{"x008-ib", "x009-ib", "x010-ib"}));
  EXPECT_EQ(expand_slurm_hostlist("gpu-[5]"), (Hosts{"gpu-5"}));
}

TEST(SlurmHostlist, RejectsMalformedLists) {
  for (const char* bad : {"n[1-2", "n1-2]", "n[]", "n[3-1]", "n[a-b]", "n[[1]]", "a,,b", ""}) {
    expect_error([&] { expand_slurm_hostlist(bad); }, ErrorKind::kInvalidConfig,
                 {"Slurm node list"});
  }
}

TEST(LaunchEnv, ReadsTheProcessEnvironment) {
  EnvMap env = read_process_environment();
  EXPECT_FALSE(env.empty());
  EXPECT_TRUE(env.count("PATH") > 0);
}

}  // namespace
}  // namespace shardlm::dist
