#include "shardlm/dist/launch_env.h"

#include <charconv>
#include <sstream>

#include "shardlm/base/error.h"

extern char** environ;  // POSIX; read only by read_process_environment()

namespace shardlm::dist {
namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidConfig, message);
}

const std::string* find(const EnvMap& env, const std::string& key) {
  auto it = env.find(key);
  return it == env.end() ? nullptr : &it->second;
}

int64_t parse_int(const std::string& name, const std::string& value, const std::string& source) {
  int64_t out = 0;
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, out);
  if (value.empty() || ec != std::errc() || ptr != end) {
    invalid("launch environment (" + source + "): " + name + "='" + value +
            "' is not an integer. Fix: set it to a whole number or unset it.");
  }
  return out;
}

int get_int(const EnvMap& env, const std::string& name, const std::string& source) {
  return static_cast<int>(parse_int(name, *find(env, name), source));
}

// Throws naming the variables of `names` that are missing, when some of a source's are set.
void require_all(const EnvMap& env, const std::vector<std::string>& names,
                 const std::string& source, const std::string& fix) {
  std::string missing, present;
  for (const auto& n : names) {
    std::string& list = find(env, n) ? present : missing;
    list += (list.empty() ? "" : ", ") + n;
  }
  if (!missing.empty()) {
    invalid("launch environment (" + source + ") is incomplete: " +
            (present.empty() ? std::string("some variables") : present) + " set but " +
            missing + " missing. " + fix);
  }
}

void check_ranks(const LaunchEnv& e, const std::string& rank_var, const std::string& size_var) {
  if (e.world_size < 1) {
    invalid("launch environment (" + e.source + "): " + size_var + "=" +
            std::to_string(e.world_size) + " must be >= 1");
  }
  if (e.rank < 0 || e.rank >= e.world_size) {
    invalid("launch environment (" + e.source + "): " + rank_var + "=" + std::to_string(e.rank) +
            " is outside [0, " + size_var + "=" + std::to_string(e.world_size) +
            "). Fix: every process needs a distinct rank below the world size.");
  }
  if (e.local_rank < 0 || (e.local_world_size > 0 && e.local_rank >= e.local_world_size)) {
    invalid("launch environment (" + e.source + "): local rank " +
            std::to_string(e.local_rank) + " is outside [0, " +
            std::to_string(e.local_world_size) + ")");
  }
}

void set_master(LaunchEnv& e, const EnvMap& env, const std::string& default_addr,
                int default_port) {
  const std::string* addr = find(env, "MASTER_ADDR");
  e.master_addr = addr && !addr->empty() ? *addr : default_addr;
  const std::string* port = find(env, "MASTER_PORT");
  const int64_t p = port ? parse_int("MASTER_PORT", *port, e.source) : default_port;
  if (p < 1 || p > 65535) {
    invalid("launch environment (" + e.source + "): MASTER_PORT=" + std::to_string(p) +
            " is not a TCP port in [1, 65535]");
  }
  e.master_port = static_cast<int>(p);
}

LaunchEnv from_torchrun(const EnvMap& env) {
  LaunchEnv e;
  e.source = "torchrun";
  require_all(env, {"RANK", "WORLD_SIZE"}, e.source,
              "Fix: set both RANK and WORLD_SIZE (and LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or "
              "unset them to use SLURM / Open MPI discovery.");
  e.rank = get_int(env, "RANK", e.source);
  e.world_size = get_int(env, "WORLD_SIZE", e.source);
  e.local_rank = find(env, "LOCAL_RANK") ? get_int(env, "LOCAL_RANK", e.source) : 0;
  e.local_world_size =
      find(env, "LOCAL_WORLD_SIZE") ? get_int(env, "LOCAL_WORLD_SIZE", e.source) : 0;
  if (e.world_size > 1) {
    require_all(env, {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}, e.source,
                "Fix: a multi-rank job needs MASTER_ADDR and MASTER_PORT (host and free port "
                "of rank 0) in every process.");
    if (!find(env, "LOCAL_RANK")) {
      invalid("launch environment (torchrun): WORLD_SIZE=" + std::to_string(e.world_size) +
              " but LOCAL_RANK is missing, so the GPU of this process is unknown. Fix: set "
              "LOCAL_RANK (the process index on its node).");
    }
  }
  set_master(e, env, "127.0.0.1", kDefaultMasterPort);
  check_ranks(e, "RANK", "WORLD_SIZE");
  return e;
}

LaunchEnv from_slurm(const EnvMap& env) {
  LaunchEnv e;
  e.source = "slurm";
  const std::string size_var =
      find(env, "SLURM_NTASKS") || !find(env, "SLURM_NPROCS") ? "SLURM_NTASKS" : "SLURM_NPROCS";
  require_all(env, {"SLURM_PROCID", size_var, "SLURM_LOCALID"}, e.source,
              "Fix: start the ranks with srun (one task per GPU), which sets all three.");
  e.rank = get_int(env, "SLURM_PROCID", e.source);
  e.world_size = get_int(env, size_var, e.source);
  e.local_rank = get_int(env, "SLURM_LOCALID", e.source);
  e.local_world_size = 0;
  if (const std::string* per_node = find(env, "SLURM_NTASKS_PER_NODE")) {
    // "4" or "4(x2)": take the leading count.
    std::string head = per_node->substr(0, per_node->find_first_not_of("0123456789"));
    if (!head.empty()) e.local_world_size = static_cast<int>(parse_int("SLURM_NTASKS_PER_NODE", head, e.source));
  }
  std::string first_host = "127.0.0.1";
  const std::string* nodelist = find(env, "SLURM_JOB_NODELIST");
  if (!nodelist) nodelist = find(env, "SLURM_NODELIST");
  if (nodelist) {
    const auto hosts = expand_slurm_hostlist(*nodelist);
    first_host = hosts.front();
  } else if (e.world_size > 1 && !find(env, "MASTER_ADDR")) {
    invalid("launch environment (slurm): SLURM_NTASKS=" + std::to_string(e.world_size) +
            " but neither SLURM_JOB_NODELIST nor SLURM_NODELIST nor MASTER_ADDR is set, so "
            "the rendezvous host is unknown. Fix: export MASTER_ADDR=<host of rank 0>.");
  }
  int port = kDefaultMasterPort;
  if (const std::string* job = find(env, "SLURM_JOB_ID")) {
    port = 20000 + static_cast<int>(parse_int("SLURM_JOB_ID", *job, e.source) % 20000);
  }
  set_master(e, env, first_host, port);
  check_ranks(e, "SLURM_PROCID", size_var);
  return e;
}

LaunchEnv from_openmpi(const EnvMap& env) {
  LaunchEnv e;
  e.source = "openmpi";
  require_all(env, {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
              e.source, "Fix: start the ranks with Open MPI's mpirun, which sets all three.");
  e.rank = get_int(env, "OMPI_COMM_WORLD_RANK", e.source);
  e.world_size = get_int(env, "OMPI_COMM_WORLD_SIZE", e.source);
  e.local_rank = get_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", e.source);
  e.local_world_size = find(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
                           ? get_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", e.source)
                           : 0;
  const bool one_node = e.local_world_size == e.world_size;
  if (e.world_size > 1 && !one_node && !find(env, "MASTER_ADDR")) {
    invalid("launch environment (openmpi): " + std::to_string(e.world_size) +
            " ranks span several nodes but MASTER_ADDR is not set. Fix: mpirun -x "
            "MASTER_ADDR=<host of rank 0> -x MASTER_PORT=<free port> ...");
  }
  set_master(e, env, "127.0.0.1", kDefaultMasterPort);
  check_ranks(e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
  return e;
}

}  // namespace

std::string LaunchEnv::describe() const {
  std::ostringstream os;
  os << "rank " << rank << " of " << world_size << " (local " << local_rank << ") from "
     << source << ", master " << master_addr << ":" << master_port;
  return os.str();
}

LaunchEnv discover_launch_env(const EnvMap& env) {
  if (find(env, "RANK") || find(env, "WORLD_SIZE")) return from_torchrun(env);
  if (find(env, "SLURM_PROCID")) return from_slurm(env);
  if (find(env, "OMPI_COMM_WORLD_RANK") || find(env, "OMPI_COMM_WORLD_SIZE")) {
    return from_openmpi(env);
  }
  LaunchEnv e;
  set_master(e, env, "127.0.0.1", kDefaultMasterPort);
  return e;
}

EnvMap read_process_environment() {
  EnvMap env;
  for (char** p = environ; p && *p; ++p) {
    const std::string kv(*p);
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return env;
}

namespace {

// Expands one bracket body "01-04,07" into its numbers as strings (padding kept).
std::vector<std::string> expand_ranges(const std::string& body, const std::string& whole) {
  std::vector<std::string> out;
  std::stringstream ss(body);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const size_t dash = part.find('-');
    const std::string lo = part.substr(0, dash);
    const std::string hi = dash == std::string::npos ? lo : part.substr(dash + 1);
    auto digits = [](const std::string& s) {
      return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
    };
    if (!digits(lo) || !digits(hi)) {
      invalid("Slurm node list '" + whole + "': bad range '" + part + "' (expected N or N-M)");
    }
    const int64_t a = std::stoll(lo), b = std::stoll(hi);
    if (b < a || b - a > 100000) {
      invalid("Slurm node list '" + whole + "': range '" + part + "' is empty or too large");
    }
    const size_t width = lo.size();
    for (int64_t v = a; v <= b; ++v) {
      std::string s = std::to_string(v);
      if (s.size() < width) s.insert(0, width - s.size(), '0');
      out.push_back(s);
    }
  }
  if (out.empty()) invalid("Slurm node list '" + whole + "': empty brackets");
  return out;
}

// Expands one host pattern (no top-level commas), bracket groups as a product.
void expand_pattern(const std::string& pattern, const std::string& whole,
                    std::vector<std::string>& out) {
  std::vector<std::string> acc = {""};
  size_t i = 0;
  while (i < pattern.size()) {
    const size_t open = pattern.find('[', i);
    const std::string literal = pattern.substr(i, open == std::string::npos ? open : open - i);
    if (literal.find(']') != std::string::npos) {
      invalid("Slurm node list '" + whole + "': unbalanced ']'");
    }
    for (auto& a : acc) a += literal;
    if (open == std::string::npos) break;
    const size_t close = pattern.find(']', open);
    if (close == std::string::npos) invalid("Slurm node list '" + whole + "': unbalanced '['");
    const auto values = expand_ranges(pattern.substr(open + 1, close - open - 1), whole);
    std::vector<std::string> next;
    for (const auto& a : acc)
      for (const auto& v : values) next.push_back(a + v);
    acc = std::move(next);
    i = close + 1;
  }
  for (auto& a : acc) {
    if (a.empty()) invalid("Slurm node list '" + whole + "': empty host name");
    out.push_back(std::move(a));
  }
}

}  // namespace

std::vector<std::string> expand_slurm_hostlist(const std::string& hostlist) {
  std::vector<std::string> out;
  std::string current;
  int depth = 0;
  for (char c : hostlist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0 || depth > 1) invalid("Slurm node list '" + hostlist + "': unbalanced brackets");
    if (c == ',' && depth == 0) {
      expand_pattern(current, hostlist, out);
      current.clear();
    } else if (c != ' ') {
      current += c;
    }
  }
  if (depth != 0) invalid("Slurm node list '" + hostlist + "': unbalanced '['");
  expand_pattern(current, hostlist, out);
  return out;
}

}  // namespace shardlm::dist
