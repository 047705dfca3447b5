// LaunchEnv: who this process is in the job, discovered from the launcher's environment.
//
// Sources, first match wins (DESIGN §3):
//   1. torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//      (also `shardlm launch`); LOCAL_WORLD_SIZE when present.
//   2. SLURM (srun): SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS), SLURM_LOCALID; master
//      address = MASTER_ADDR if set, else the first host of SLURM_JOB_NODELIST /
//      SLURM_NODELIST (Slurm hostlist syntax, e.g. "node[01-04,07],gpu3"); master port =
//      MASTER_PORT if set, else 20000 + SLURM_JOB_ID % 20000 (jobs sharing a node differ).
//   3. Open MPI (mpirun): OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE; master
//      address = MASTER_ADDR, or 127.0.0.1 when all ranks are on one node; MASTER_PORT or 29500.
//   4. none of these: a single process (rank 0 of 1, 127.0.0.1:29500).
// A source that is partly set (RANK without WORLD_SIZE, ...) or inconsistent (rank >= size,
// non-numeric values) throws Error(kInvalidConfig) naming the variables and the fix.
//
// The environment is an argument (a seam for tests); read_process_environment() snapshots the
// real one in main().
//
// Thread contract: pure functions over values.
//
//   LaunchEnv env = discover_launch_env(read_process_environment());
//   std::cout << env.describe();   // "rank 3 of 8 (local 3) from torchrun, master node1:29500"
#pragma once

#include <map>
#include <string>
#include <vector>

namespace shardlm::dist {

using EnvMap = std::map<std::string, std::string>;

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;          // ranks on this node (0 when the launcher does not say)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single";  // "torchrun", "slurm", "openmpi" or "single"

  std::string describe() const;
};

inline constexpr int kDefaultMasterPort = 29500;

LaunchEnv discover_launch_env(const EnvMap& env);

// A copy of this process's environment (environ).
EnvMap read_process_environment();

// Slurm hostlist expansion: "node[01-04,07],gpu3" -> node01 node02 node03 node04 node07 gpu3;
// several bracket groups in one name expand as a product ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1
// r2n2), zero padding follows the range's first bound. Malformed lists throw kInvalidConfig.
std::vector<std::string> expand_slurm_hostlist(const std::string& hostlist);

}  // namespace shardlm::dist
