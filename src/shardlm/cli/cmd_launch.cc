// `shardlm launch`: starts the local ranks of a job, torchrun-style.
//
//   shardlm launch --nproc-per-node 2 [--nnodes 1 --node-rank 0 --master-addr A --master-port P]
//                  [--device auto|cpu|cuda] -- train <train flags>
//
// Each of the N children is this binary run with the arguments after `--` and torchrun's
// variables: RANK = node_rank·N + local_rank, WORLD_SIZE = nnodes·N, LOCAL_RANK,
// LOCAL_WORLD_SIZE = N, MASTER_ADDR, MASTER_PORT (`shardlm train` discovers them through
// dist/launch_env). On the CPU (--device cpu, or no GPU) the ranks talk through the socket
// communicator; on GPUs each local rank takes GPU LOCAL_RANK and NCCL.
//
// Supervision: SIGINT / SIGTERM sent to the launcher are forwarded to every child (SIGKILL
// follows --grace-period seconds later). When a child exits non-zero (or is killed), the
// launcher names it and gives the others --grace-period seconds to fail on their own (their
// collectives fail fast naming the dead rank, so their messages reach the log), then sends
// SIGTERM, then SIGKILL after another grace period, and exits non-zero (the failed child's exit
// code, 128 + signal when it was killed). Children die with the launcher (PR_SET_PDEATHSIG).
// --master-port 0 picks a free port (single node only).
#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/cli/commands.h"
#include "shardlm/dist/launch_env.h"

namespace shardlm::cli {
namespace {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = dist::kDefaultMasterPort;
  std::string device = "auto";
  double grace_period_s = 5.0;
  std::vector<std::string> command;  // after `--`
};

volatile std::sig_atomic_t g_forward_signal = 0;  // the one piece of state a handler may touch
extern "C" void on_signal(int sig) { g_forward_signal = sig; }

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidConfig, "launch: " + message);
}

// A free TCP port on this host (bound, read back, released: the first rank binds it again).
int pick_free_port(const std::string& addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) sa.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(sa);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw Error(ErrorKind::kIo, std::string("launch: cannot find a free port: ") +
                                    std::strerror(err) + ". Fix: pass --master-port.");
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}

std::string self_executable() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) throw Error(ErrorKind::kIo, "launch: cannot read /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

// The command's --device value, or "" when it has none.
std::string device_flag(const std::vector<std::string>& cmd) {
  std::string value;
  for (size_t i = 0; i < cmd.size(); ++i) {
    if (cmd[i] == "--device" && i + 1 < cmd.size()) value = cmd[i + 1];
    if (cmd[i].rfind("--device=", 0) == 0) value = cmd[i].substr(9);
  }
  return value;
}

struct Child {
  int rank = 0, local_rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "stopped";
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

pid_t spawn(const std::string& exe, const std::vector<std::string>& args,
            const std::vector<std::string>& env) {
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    throw Error(ErrorKind::kIo, std::string("launch: fork failed: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // Die with the launcher (also when it is SIGKILLed), never outlive it as an orphan.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::execve(exe.c_str(), argv.data(), envp.data());
    const std::string msg = "shardlm launch: cannot execute " + exe + ": " + std::strerror(errno) + "\n";
    [[maybe_unused]] ssize_t w = ::write(2, msg.data(), msg.size());
    ::_exit(127);
  }
  return pid;
}

int run_launch(LaunchOptions o) {
  if (o.nproc_per_node < 1) invalid("--nproc-per-node must be >= 1, got " + std::to_string(o.nproc_per_node));
  if (o.nnodes < 1) invalid("--nnodes must be >= 1, got " + std::to_string(o.nnodes));
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    invalid("--node-rank " + std::to_string(o.node_rank) + " is outside [0, --nnodes " +
            std::to_string(o.nnodes) + ")");
  }
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda") {
    invalid("--device must be auto, cpu or cuda, got '" + o.device + "'");
  }
  if (o.command.empty()) {
    invalid("no command to run. Usage: shardlm launch --nproc-per-node N -- train <flags>");
  }
  if (o.master_port < 0 || o.master_port > 65535) {
    invalid("--master-port " + std::to_string(o.master_port) + " is not a TCP port");
  }
  if (o.master_port == 0) {
    if (o.nnodes > 1) invalid("--master-port 0 (pick a free port) works on one node only; "
                              "give every node the same --master-port");
    o.master_port = pick_free_port(o.master_addr);
  }
  if (o.grace_period_s < 0) invalid("--grace-period must not be negative");

  // The device choice reaches the children as their --device flag.
  std::vector<std::string> command = o.command;
  const std::string given = device_flag(command);
  if (o.device != "auto") {
    if (given.empty()) {
      command.push_back("--device");
      command.push_back(o.device);
    } else if (given != o.device) {
      invalid("--device " + o.device + " conflicts with the command's --device " + given +
              "; give it once");
    }
  }

  const std::string exe = self_executable();
  std::vector<std::string> args = {exe};
  args.insert(args.end(), command.begin(), command.end());
  const int world = o.nnodes * o.nproc_per_node;

  std::vector<std::string> base_env;
  for (const auto& [k, v] : dist::read_process_environment()) {
    static const char* kOurs[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                  "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "NODE_RANK"};
    if (std::find_if(std::begin(kOurs), std::end(kOurs), [&](const char* x) { return k == x; }) ==
        std::end(kOurs)) {
      base_env.push_back(k + "=" + v);
    }
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);

  std::vector<Child> children(static_cast<size_t>(o.nproc_per_node));
  for (int lr = 0; lr < o.nproc_per_node; ++lr) {
    Child& c = children[static_cast<size_t>(lr)];
    c.local_rank = lr;
    c.rank = o.node_rank * o.nproc_per_node + lr;
    std::vector<std::string> env = base_env;
    env.push_back("RANK=" + std::to_string(c.rank));
    env.push_back("WORLD_SIZE=" + std::to_string(world));
    env.push_back("LOCAL_RANK=" + std::to_string(lr));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(o.nproc_per_node));
    env.push_back("GROUP_RANK=" + std::to_string(o.node_rank));
    env.push_back("MASTER_ADDR=" + o.master_addr);
    env.push_back("MASTER_PORT=" + std::to_string(o.master_port));
    c.pid = spawn(exe, args, env);
    c.running = true;
  }

  using Clock = std::chrono::steady_clock;
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(o.grace_period_s * 1000));
  const Child* failed = nullptr;
  int forwarded = 0;
  // After a failure: the others get `grace` to notice (their collectives fail fast, naming the
  // dead rank) and exit with their own message; then SIGTERM; `grace` later, SIGKILL.
  enum class Stage { kRunning, kDraining, kTerminating, kKilled } stage = Stage::kRunning;
  Clock::time_point next_stage_at{};
  auto signal_running = [&](int sig) {
    for (auto& c : children) {
      if (c.running) ::kill(c.pid, sig);
    }
  };

  for (;;) {
    if (g_forward_signal != 0) {
      forwarded = g_forward_signal;
      g_forward_signal = 0;
      std::cerr << "shardlm launch: got signal " << forwarded << " (" << strsignal(forwarded)
                << "), forwarding it to the ranks\n";
      signal_running(forwarded);
      if (stage < Stage::kTerminating) {
        stage = Stage::kTerminating;
        next_stage_at = Clock::now() + grace;
      }
    }
    // Reap everything that has exited since the last look; among several failures at once,
    // the one killed by a signal is the likelier root cause (the others saw it die).
    std::vector<Child*> newly_failed;
    for (;;) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (auto& c : children) {
        if (c.pid != pid) continue;
        c.running = false;
        c.status = status;
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) newly_failed.push_back(&c);
      }
    }
    if (!failed && forwarded == 0 && !newly_failed.empty()) {
      std::stable_sort(newly_failed.begin(), newly_failed.end(), [](Child* a, Child* b) {
        return WIFSIGNALED(a->status) > WIFSIGNALED(b->status);
      });
      failed = newly_failed.front();
      std::cerr << "shardlm launch: rank " << failed->rank << " (local rank "
                << failed->local_rank << ", pid " << failed->pid << ") "
                << describe_status(failed->status) << "; the other ranks get "
                << o.grace_period_s << " s to stop\n";
      stage = Stage::kDraining;
      next_stage_at = Clock::now() + grace;
    }
    if (std::none_of(children.begin(), children.end(), [](const Child& c) { return c.running; })) {
      break;
    }
    if (stage != Stage::kRunning && stage != Stage::kKilled && Clock::now() >= next_stage_at) {
      if (stage == Stage::kDraining) {
        signal_running(SIGTERM);
        stage = Stage::kTerminating;
        next_stage_at = Clock::now() + grace;
      } else {
        signal_running(SIGKILL);
        stage = Stage::kKilled;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);

  if (failed) {
    std::cerr << "shardlm launch: failed: rank " << failed->rank << " (local rank "
              << failed->local_rank << ") " << describe_status(failed->status)
              << " first; see its error above\n";
    const int code = exit_code_of(failed->status);
    return code == 0 ? 1 : code;
  }
  if (forwarded != 0) return 128 + forwarded;
  return 0;
}

}  // namespace

void register_launch(CLI::App& app) {
  auto o = std::make_shared<LaunchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "launch", "Start the local ranks of a job (torchrun-style): launch [options] -- train ...");
  cmd->add_option("--nproc-per-node", o->nproc_per_node, "Ranks (processes) on this node");
  cmd->add_option("--nnodes", o->nnodes, "Number of nodes");
  cmd->add_option("--node-rank", o->node_rank, "This node's index in [0, nnodes)");
  cmd->add_option("--master-addr", o->master_addr, "Rank 0's host (rendezvous store)");
  cmd->add_option("--master-port", o->master_port, "Rendezvous port (0: pick a free one)");
  cmd->add_option("--device", o->device, "auto, cpu or cuda (one GPU per local rank)");
  cmd->add_option("--grace-period", o->grace_period_s,
                  "Seconds the other ranks get to exit after one failed, before SIGKILL");
  cmd->add_option("command", o->command, "The shardlm command each rank runs, after --")
      ->required();
  cmd->callback([o] {
    const int code = run_launch(*o);
    if (code != 0) throw CommandExit(code);
  });
}

}  // namespace shardlm::cli
