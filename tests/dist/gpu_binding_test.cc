// GPU binding of a multi-process job, with made-up GPUs: ranks as threads, each with its own
// TcpStore client, exchange proposals; every launcher's way of showing GPUs (all visible, one
// bound per task, too few, none on some ranks) gets the agreed device or one clear error on
// every rank.
#include "shardlm/dist/gpu_binding.h"

#include <gtest/gtest.h>

#include <future>
#include <stdexcept>
#include <thread>

#include "rank_threads.h"
#include "shardlm/tensor/device.h"

namespace shardlm::dist {
namespace {

using namespace std::chrono_literals;
using testing::expect_error;

// A rank's proposal from the GPUs it sees (UUIDs; empty: none), as propose_gpu would make it.
GpuProposal fake_proposal(int local_rank, const std::string& host,
                          const std::vector<std::string>& visible_uuids) {
  GpuProposal p;
  p.local_rank = local_rank;
  p.host = host;
  p.visible = static_cast<int>(visible_uuids.size());
  if (p.visible == 0) return p;
  p.index = local_rank % p.visible;
  p.uuid = visible_uuids[static_cast<size_t>(p.index)];
  return p;
}

// Runs the exchange for every rank's proposal (ranks as threads over one loopback store).
// Rank 0 owns the store's server and destroys it as soon as its exchange returns, as a rank 0
// that fails on a shared GPU does: the other ranks must be done with the store by then.
std::vector<GpuCensus> exchange_all(const std::vector<GpuProposal>& proposals,
                                    std::vector<std::string> flags = {}) {
  const int n = static_cast<int>(proposals.size());
  if (flags.empty()) flags.assign(static_cast<size_t>(n), "--device auto");
  std::promise<int> port_promise;
  std::shared_future<int> port = port_promise.get_future().share();
  std::vector<GpuCensus> census(static_cast<size_t>(n));
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      const auto i = static_cast<size_t>(r);
      try {
        if (r == 0) {
          TcpStore server(
              TcpStoreOptions{.host = "127.0.0.1", .port = 0, .is_server = true, .timeout = 10s});
          port_promise.set_value(server.port());
          census[i] = exchange_gpu_proposals(server, r, n, proposals[i], flags[i], 10s);
        } else {
          if (port.wait_for(10s) != std::future_status::ready)
            throw std::runtime_error("rank 0 never served the store");
          TcpStore client(TcpStoreOptions{.host = "127.0.0.1", .port = port.get(), .timeout = 10s});
          census[i] = exchange_gpu_proposals(client, r, n, proposals[i], flags[i], 10s);
        }
      } catch (const std::exception& e) {
        errors[i] = e.what();
        if (r == 0) {
          try {
            port_promise.set_value(-1);
          } catch (const std::future_error&) {
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
  return census;
}

const std::vector<std::string> kNodeA = {"GPU-a0", "GPU-a1", "GPU-a2", "GPU-a3"};
const std::vector<std::string> kNodeB = {"GPU-b0", "GPU-b1", "GPU-b2", "GPU-b3"};

TEST(GpuBinding, AllGpusVisibleGivesEachLocalRankItsOwn) {
  // torchrun / shardlm launch: 2 nodes × 4 ranks, every GPU of the node visible.
  std::vector<GpuProposal> p;
  for (int r = 0; r < 8; ++r) p.push_back(fake_proposal(r % 4, r < 4 ? "a" : "b", r < 4 ? kNodeA : kNodeB));
  const std::vector<GpuCensus> census = exchange_all(p);
  for (int r = 0; r < 8; ++r) {
    const GpuCensus& c = census[static_cast<size_t>(r)];
    EXPECT_EQ(c.ranks, 8);
    EXPECT_EQ(c.ranks_without_gpu, 0);
    EXPECT_EQ(c.ranks_sharing_a_gpu, 0);
    EXPECT_TRUE(c.sharers.empty());
    for (const char* requested : {"auto", "cuda"}) {
      const RankDevice d = decide_rank_device(requested, r, p[static_cast<size_t>(r)], c, false);
      EXPECT_EQ(d.device, "cuda") << requested;
      EXPECT_EQ(d.gpu_index, r % 4) << requested;
      EXPECT_EQ(d.note, "");
    }
    EXPECT_EQ(decide_rank_device("cpu", r, p[static_cast<size_t>(r)], c, false).device, "cpu");
  }
}

TEST(GpuBinding, OneGpuBoundPerTaskIsNotSharing) {
  // srun --gpus-per-task=1: local ranks 0..3 each see one different GPU, as device 0.
  std::vector<GpuProposal> p;
  for (int r = 0; r < 4; ++r) p.push_back(fake_proposal(r, "a", {kNodeA[static_cast<size_t>(r)]}));
  const std::vector<GpuCensus> census = exchange_all(p);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(census[static_cast<size_t>(r)].ranks_sharing_a_gpu, 0);
    for (const char* requested : {"auto", "cuda"}) {
      const RankDevice d =
          decide_rank_device(requested, r, p[static_cast<size_t>(r)], census[static_cast<size_t>(r)], false);
      EXPECT_EQ(d.device, "cuda");
      EXPECT_EQ(d.gpu_index, 0);  // the only GPU it sees
    }
  }
}

TEST(GpuBinding, FewerGpusThanRanksFailsEveryRankOrFallsBackOrShares) {
  // 4 local ranks, 2 GPUs visible: ranks 0 and 2 would take GPU a0, ranks 1 and 3 GPU a1.
  const std::vector<std::string> two = {"GPU-a0", "GPU-a1"};
  std::vector<GpuProposal> p;
  for (int r = 0; r < 4; ++r) p.push_back(fake_proposal(r, "nodeA", two));
  const std::vector<GpuCensus> census = exchange_all(p);
  for (int r = 0; r < 4; ++r) {
    const GpuCensus& c = census[static_cast<size_t>(r)];
    const GpuProposal& mine = p[static_cast<size_t>(r)];
    EXPECT_EQ(c.ranks_sharing_a_gpu, 4);
    EXPECT_TRUE(c.own_gpu_shared);
    EXPECT_EQ(c.shared_uuid, mine.uuid);  // its own shared GPU, not another rank's example
    ASSERT_EQ(c.sharers.size(), 2u);
    const std::string partner = "rank " + std::to_string((r + 2) % 4) + " (local rank " +
                                std::to_string((r + 2) % 4) + " on nodeA, GPU " +
                                std::to_string(r % 2) + " of 2 visible)";
    EXPECT_TRUE(c.sharers[0] == partner || c.sharers[1] == partner)
        << c.sharers[0] << " / " << c.sharers[1];
    // --device cuda: every rank fails, naming the partner and the fixes.
    expect_error([&] { decide_rank_device("cuda", r, mine, c, false); },
                 ErrorKind::kInvalidConfig,
                 {"4 rank(s) would share a GPU", partner, mine.uuid, "NCCL needs one GPU per rank",
                  "every GPU of the node visible", "--distributed-backend gloo"});
    // --device auto: every rank runs on the CPU and says why.
    const RankDevice a = decide_rank_device("auto", r, mine, c, false);
    EXPECT_EQ(a.device, "cpu");
    EXPECT_NE(a.note.find("4 rank(s) would share a GPU"), std::string::npos) << a.note;
    // gloo: sharing is allowed, round robin over the visible GPUs.
    for (const char* requested : {"auto", "cuda"}) {
      const RankDevice g = decide_rank_device(requested, r, mine, c, true);
      EXPECT_EQ(g.device, "cuda");
      EXPECT_EQ(g.gpu_index, r % 2);
    }
  }
}

TEST(GpuBinding, RanksNotSharingStillFailWhenOthersShare) {
  // Node a: 2 ranks on 2 GPUs (fine); node b: 2 ranks on 1 GPU (shared).
  std::vector<GpuProposal> p = {fake_proposal(0, "a", {"GPU-a0", "GPU-a1"}),
                                fake_proposal(1, "a", {"GPU-a0", "GPU-a1"}),
                                fake_proposal(0, "b", {"GPU-b0"}), fake_proposal(1, "b", {"GPU-b0"})};
  const std::vector<GpuCensus> census = exchange_all(p);
  for (int r = 0; r < 4; ++r) {
    const GpuCensus& c = census[static_cast<size_t>(r)];
    EXPECT_EQ(c.ranks_sharing_a_gpu, 2);
    EXPECT_EQ(c.own_gpu_shared, r >= 2);
    EXPECT_EQ(c.shared_uuid, "GPU-b0");  // rank 0 and 1 learn which GPU is shared, and by whom
    expect_error([&] { decide_rank_device("cuda", r, p[static_cast<size_t>(r)], c, false); },
                 ErrorKind::kInvalidConfig,
                 {"GPU-b0", "rank 2 (local rank 0 on b", "rank 3 (local rank 1 on b"});
    EXPECT_EQ(decide_rank_device("auto", r, p[static_cast<size_t>(r)], c, false).device, "cpu");
  }
}

TEST(GpuBinding, RanksWithoutGpus) {
  // Rank 1 sees no GPU (empty CUDA_VISIBLE_DEVICES): auto runs every rank on the CPU; cuda fails
  // on the others by count, while rank 1 itself gets select_device's own explanation.
  std::vector<GpuProposal> p = {fake_proposal(0, "a", {"GPU-a0"}), fake_proposal(1, "a", {}),
                                fake_proposal(2, "a", {"GPU-a2"})};
  const std::vector<GpuCensus> census = exchange_all(p);
  for (int r = 0; r < 3; ++r) {
    const GpuCensus& c = census[static_cast<size_t>(r)];
    const GpuProposal& mine = p[static_cast<size_t>(r)];
    EXPECT_EQ(c.ranks_without_gpu, 1);
    const RankDevice a = decide_rank_device("auto", r, mine, c, true);
    EXPECT_EQ(a.device, "cpu");
    EXPECT_NE(a.note.find("1 of 3 ranks see no GPU"), std::string::npos) << a.note;
    if (r == 1) {
      EXPECT_EQ(decide_rank_device("cuda", r, mine, c, false).device, "cuda");
    } else {
      expect_error([&] { decide_rank_device("cuda", r, mine, c, false); },
                   ErrorKind::kInvalidConfig,
                   {"1 rank(s) of the job see no GPU: rank 1 (local rank 1 on a, no GPU visible)",
                    "--device cpu"});
    }
  }
  // A machine without GPUs: auto is the CPU, with nothing to explain.
  const std::vector<GpuProposal> none = {fake_proposal(0, "a", {}), fake_proposal(1, "a", {})};
  const std::vector<GpuCensus> cpu_census = exchange_all(none);
  const RankDevice d = decide_rank_device("auto", 0, none[0], cpu_census[0], false);
  EXPECT_EQ(d.device, "cpu");
  EXPECT_EQ(d.note, "");
}

TEST(GpuBinding, RanksStartedWithDifferentDeviceFlagsAllFail) {
  // One rank with --device cpu among GPU ranks would wait on another communicator's keys: every
  // rank stops at once instead, naming both values.
  std::vector<GpuProposal> p;
  for (int r = 0; r < 3; ++r) p.push_back(fake_proposal(r, "a", kNodeA));
  const std::vector<std::string> flags = {"--device auto", "--device cpu", "--device auto"};
  const std::vector<GpuCensus> census = exchange_all(p, flags);
  for (int r = 0; r < 3; ++r) {
    const auto i = static_cast<size_t>(r);
    expect_error([&] { decide_rank_device(r == 1 ? "cpu" : "auto", r, p[i], census[i], false); },
                 ErrorKind::kInvalidConfig,
                 {"different device flags", "'" + flags[i] + "'",
                  r == 1 ? "only 1 of 3 ranks" : "only 2 of 3 ranks", "rank 0 has '--device auto'"});
  }
}

TEST(GpuBinding, ProposalOfThisProcess) {
  const GpuProposal p = propose_gpu(5, "here");
  EXPECT_EQ(p.visible, cuda_device_count());
  if (p.visible == 0) {
    EXPECT_EQ(p.index, -1);
    EXPECT_EQ(p.describe(2), "rank 2 (local rank 5 on here, no GPU visible)");
  } else {
    EXPECT_EQ(p.index, 5 % p.visible);
    EXPECT_FALSE(p.uuid.empty());
  }
  EXPECT_FALSE(host_name().empty());
}

}  // namespace
}  // namespace shardlm::dist
