#include "shardlm/dist/gpu_binding.h"

#include <unistd.h>

#include <algorithm>
#include <array>

#include "shardlm/base/error.h"
#include "shardlm/tensor/device.h"

namespace shardlm::dist {

namespace {

const std::string kPrefix = "gpu-binding/";
constexpr int kNamed = 4;  // ranks without a GPU named in messages

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

// The ranks without a GPU, as named in the census (the first kNamed of them).
std::string ranks_without_gpu(const GpuCensus& census) {
  return joined(census.without) + (census.ranks_without_gpu > kNamed ? ", ..." : "");
}

}  // namespace

std::string GpuProposal::describe(int rank) const {
  std::string out = "rank " + std::to_string(rank) + " (local rank " +
                    std::to_string(local_rank) + " on " + host + ", ";
  if (index < 0) return out + "no GPU visible)";
  return out + "GPU " + std::to_string(index) + " of " + std::to_string(visible) + " visible)";
}

std::string host_name() {
  std::array<char, 256> buf{};
  if (gethostname(buf.data(), buf.size() - 1) != 0 || buf[0] == '\0') return "unknown-host";
  return buf.data();
}

GpuProposal propose_gpu(int local_rank, const std::string& host) {
  GpuProposal p;
  p.local_rank = local_rank;
  p.host = host;
  p.visible = cuda_device_count();
  if (p.visible == 0) return p;
  p.index = local_rank % p.visible;
  p.uuid = cuda_device_uuid(p.index);
  // Without a UUID the host and index still tell the devices of one node apart when all of them
  // are visible; binding per task is then undetectable, and such ranks look shared.
  if (p.uuid.empty()) p.uuid = host + ":cuda" + std::to_string(p.index);
  return p;
}

GpuCensus exchange_gpu_proposals(TcpStore& store, int rank, int world_size,
                                 const GpuProposal& mine, const std::string& flags,
                                 std::chrono::milliseconds timeout) {
  const std::string gpu_key = kPrefix + "gpu/" + mine.uuid;
  store.add(kPrefix + "flags/" + flags, 1);
  if (rank == 0) store.set(kPrefix + "flags-of-rank-0", flags);
  if (mine.index < 0) {
    const int64_t n = store.add(kPrefix + "without", 1);
    if (n <= kNamed) store.set(kPrefix + "without/" + std::to_string(n), mine.describe(rank));
  } else {
    const int64_t n = store.add(gpu_key, 1);
    store.set(gpu_key + "/" + std::to_string(n), mine.describe(rank));
    // The second proposer counts the first as well, and names the GPU for ranks not on it.
    if (n >= 2) store.add(kPrefix + "sharing", n == 2 ? 2 : 1);
    if (n == 2 && store.add(kPrefix + "examples", 1) == 1) store.set(kPrefix + "example", gpu_key);
  }
  store_barrier(store, "gpu-binding", rank, world_size, timeout);
  GpuCensus census;
  census.ranks = world_size;
  census.my_flags = flags;
  census.ranks_with_my_flags = static_cast<int>(store.add(kPrefix + "flags/" + flags, 0));
  if (census.ranks_with_my_flags != world_size)
    census.flags_of_rank_0 = store.get(kPrefix + "flags-of-rank-0", timeout);
  census.ranks_without_gpu = static_cast<int>(store.add(kPrefix + "without", 0));
  for (int k = 1; k <= std::min(census.ranks_without_gpu, kNamed); ++k)
    census.without.push_back(store.get(kPrefix + "without/" + std::to_string(k), timeout));
  census.ranks_sharing_a_gpu = static_cast<int>(store.add(kPrefix + "sharing", 0));
  census.own_gpu_shared = mine.index >= 0 && store.add(gpu_key, 0) > 1;
  if (census.ranks_sharing_a_gpu > 0) {
    const std::string shared_key =
        census.own_gpu_shared ? gpu_key : store.get(kPrefix + "example", timeout);
    census.shared_uuid = shared_key.substr((kPrefix + "gpu/").size());
    const int64_t n = store.add(shared_key, 0);
    for (int64_t k = 1; k <= n; ++k)
      census.sharers.push_back(store.get(shared_key + "/" + std::to_string(k), timeout));
  }
  // Rank 0 serves the store, and every rank may fail right after this (a shared GPU): it leaves
  // only when every rank has read its census (each rank's last store operation is its "read"
  // key), so no rank's reads meet a vanished store. (A final store_barrier would not do: rank 0
  // could leave while a peer still polls the barrier's keys.)
  store.set(kPrefix + "read/" + std::to_string(rank), "1");
  if (rank == 0) {
    for (int r = 1; r < world_size; ++r) {
      try {
        store.get(kPrefix + "read/" + std::to_string(r), timeout);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kTimeout) throw;
        throw Error(ErrorKind::kTimeout, "the GPU binding exchange: rank " + std::to_string(r) +
                                             " passed its barrier but did not read the result "
                                             "(it died or hangs; see its log): " + e.what());
      }
    }
  }
  return census;
}

RankDevice decide_rank_device(const std::string& requested, int rank, const GpuProposal& mine,
                              const GpuCensus& census, bool ranks_may_share) {
  if (census.ranks_with_my_flags != census.ranks)
    throw Error(ErrorKind::kInvalidConfig,
                "the ranks were started with different device flags: this is " +
                    mine.describe(rank) + " with '" + census.my_flags + "', as only " +
                    std::to_string(census.ranks_with_my_flags) + " of " +
                    std::to_string(census.ranks) + " ranks; rank 0 has '" +
                    census.flags_of_rank_0 + "'. Start every rank with the same --device and "
                    "--distributed-backend");
  if (requested == "cpu") return {"cpu", 0, ""};
  const bool sharing_blocks = census.ranks_sharing_a_gpu > 0 && !ranks_may_share;
  if (requested == "cuda") {
    // No GPU here: select_device explains it (no CUDA backend, or none visible).
    if (mine.index < 0) return {"cuda", 0, ""};
    if (census.ranks_without_gpu > 0)
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: " + std::to_string(census.ranks_without_gpu) +
                      " rank(s) of the job see no GPU: " + ranks_without_gpu(census) +
                      " (their own errors say why; this is " + mine.describe(rank) +
                      "). Fix: start ranks only where GPUs are visible, or use --device cpu");
    if (sharing_blocks)
      throw Error(ErrorKind::kInvalidConfig,
                  "--device cuda: " + std::to_string(census.ranks_sharing_a_gpu) +
                      " rank(s) would share a GPU, e.g. " + joined(census.sharers) +
                      " would all use GPU " + census.shared_uuid + " (this is " +
                      mine.describe(rank) +
                      "); NCCL needs one GPU per rank. Fix: start at most as many ranks per "
                      "node as it has GPUs, with every GPU of the node visible to every rank "
                      "(CUDA_VISIBLE_DEVICES, srun --gpus-per-node; one GPU bound per task also "
                      "works, but can keep NCCL from using NVLink between them), use --device "
                      "cpu, or --distributed-backend gloo to let ranks share a GPU (slow: "
                      "collectives go through host memory)" +
                      (census.shared_uuid.find(":cuda") != std::string::npos
                           ? ". (The driver gave no GPU UUID, so GPUs are told apart by host and "
                             "index: ranks bound to one GPU each look shared)"
                           : std::string()));
    return {"cuda", mine.index, ""};
  }
  // auto: every rank reaches the same answer from the same counts.
  if (census.ranks_without_gpu == census.ranks) return {"cpu", 0, ""};  // a CPU machine
  if (census.ranks_without_gpu > 0)
    return {"cpu", 0,
            "--device auto: " + std::to_string(census.ranks_without_gpu) + " of " +
                std::to_string(census.ranks) + " ranks see no GPU (" + ranks_without_gpu(census) +
                "), so every rank runs on the CPU; pass --device cuda to make that an error"};
  if (sharing_blocks)
    return {"cpu", 0,
            "--device auto: " + std::to_string(census.ranks_sharing_a_gpu) +
                " rank(s) would share a GPU with another rank (NCCL needs one GPU per rank), "
                "so every rank runs on the CPU; give each local rank its own GPU, or pass "
                "--distributed-backend gloo to let ranks share GPUs"};
  return {"cuda", mine.index, ""};
}

}  // namespace shardlm::dist
