// NCCL communicator smoke test for a multi-GPU machine (not part of dist_tests: it needs GPUs,
// NCCL and one process per GPU). Build and run with tests/dist/nccl_smoke/run.sh, which starts
// it both torchrun-style (RANK/WORLD_SIZE/...) and through mpirun.
//
// Checks every collective against its closed form on the GPU, split, RankContext, the timeout
// path (a rank skips an all_reduce: the other throws kTimeout naming it) and the dead-rank path
// (a rank aborts: the other fails fast naming it). Prints one line per check; exit 0 = all pass.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/dist/launch_env.h"
#include "shardlm/dist/nccl_communicator.h"
#include "shardlm/dist/parallel_layout.h"
#include "shardlm/dist/rank_context.h"
#include "shardlm/dist/tcp_store.h"
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/tensor/tensor.h"

using namespace shardlm;
using namespace shardlm::dist;
using namespace std::chrono_literals;

namespace {

int failures = 0;
int g_rank = 0;

void report(bool ok, const std::string& what) {
  std::printf("[rank %d] %s %s\n", g_rank, ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

std::vector<float> to_host(const Tensor& t) {
  std::vector<float> h(t.numel());
  cudaMemcpy(h.data(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost);
  return h;
}
void from_host(const Tensor& t, const std::vector<float>& h) {
  cudaMemcpy(t.raw(), h.data(), t.nbytes(), cudaMemcpyHostToDevice);
}

}  // namespace

int main() {
  LaunchEnv env = discover_launch_env(read_process_environment());
  g_rank = env.rank;
  std::printf("[rank %d] %s\n", env.rank, env.describe().c_str());
  const int n = env.world_size;
  DeviceContext ctx(Device::cuda(env.local_rank));
  ops::cuda::init_cuda_backend(ctx);
  const Device dev = ctx.device();
  TcpStore store({.host = env.master_addr, .port = env.master_port, .is_server = env.rank == 0,
                  .timeout = 60s});
  auto world = NcclCommunicator::create_world(ctx, store, env.rank, n, {.timeout = 60s});
  report(world->size() == n && world->rank() == env.rank, "create_world");

  const int64_t m = 1000003;  // odd size
  OwnedTensor x = OwnedTensor::empty(DType::kF32, {m}, dev);
  std::vector<float> h(m);
  for (int64_t i = 0; i < m; ++i) h[i] = static_cast<float>((env.rank + 1) * (i % 7));
  from_host(x, h);
  world->all_reduce(x.view());
  ops::cuda::synchronize(ctx);
  auto got = to_host(x);
  bool ok = true;
  for (int64_t i = 0; i < m; ++i) ok &= got[i] == static_cast<float>(n * (n + 1) / 2 * (i % 7));
  report(ok, "all_reduce sum fp32 (1000003 elements)");

  from_host(x, h);
  world->all_reduce(x.view(), ReduceOp::kMax);
  got = to_host(x);
  ok = true;
  for (int64_t i = 0; i < m; ++i) ok &= got[i] == static_cast<float>(n * (i % 7));
  report(ok, "all_reduce max");

  const int64_t k = 333;
  OwnedTensor in = OwnedTensor::empty(DType::kF32, {k * n}, dev);
  OwnedTensor out = OwnedTensor::empty(DType::kF32, {k}, dev);
  std::vector<float> hin(k * n);
  for (int64_t i = 0; i < k * n; ++i) hin[i] = static_cast<float>(i + env.rank);
  from_host(in, hin);
  world->reduce_scatter(out.view(), in.view());
  got = to_host(out);
  ok = true;
  for (int64_t i = 0; i < k; ++i) {
    ok &= got[i] == static_cast<float>(n * (env.rank * k + i) + n * (n - 1) / 2);
  }
  report(ok, "reduce_scatter");

  std::vector<float> mine(k, static_cast<float>(env.rank));
  from_host(out, mine);
  world->all_gather(in.view(), out.view());
  got = to_host(in);
  ok = true;
  for (int64_t i = 0; i < k * n; ++i) ok &= got[i] == static_cast<float>(i / k);
  report(ok, "all_gather");

  from_host(out, mine);
  world->broadcast(out.view(), n - 1);
  got = to_host(out);
  report(got[0] == n - 1 && got[k - 1] == n - 1, "broadcast");

  OwnedTensor sbuf = OwnedTensor::empty(DType::kF32, {k}, dev);
  OwnedTensor rbuf = OwnedTensor::empty(DType::kF32, {k}, dev);
  from_host(sbuf, mine);
  std::vector<P2POp> ring = {{P2POp::Kind::kSend, sbuf.view(), (env.rank + 1) % n},
                             {P2POp::Kind::kRecv, rbuf.view(), (env.rank + n - 1) % n}};
  world->batch_send_recv(ring);
  got = to_host(rbuf);
  report(got[0] == static_cast<float>((env.rank + n - 1) % n), "batch send/recv ring");
  world->barrier();
  report(true, "barrier");

  // Async overlap: two all_reduces in flight, waited in reverse order.
  from_host(x, h);
  from_host(out, mine);
  CommHandle ha = world->all_reduce_async(x.view());
  CommHandle hb = world->all_reduce_async(out.view());
  hb.wait();
  ha.wait();
  got = to_host(out);
  report(got[0] == static_cast<float>(n * (n - 1) / 2), "async handles");

  // RankContext with TP = n (every group built by ncclCommSplit).
  {
    ParallelLayout layout = ParallelLayout::create(n, {.tensor = n});
    auto dup = world->split(0, env.rank, "world2");
    RankContext rc = RankContext::create(ctx, std::move(dup), layout, env.local_rank);
    from_host(out, mine);
    rc.tp().all_reduce(out.view());
    got = to_host(out);
    report(rc.tp().size() == n && got[0] == static_cast<float>(n * (n - 1) / 2),
           "RankContext tp all_reduce");
    report(rc.dp().size() == 1, "RankContext dp size 1");
  }

  // Timeout: the last rank skips one all_reduce; the others must throw kTimeout naming it.
  {
    auto g = world->split(0, env.rank, "timeout_test");
    g->set_timeout(2s);
    const auto t0 = std::chrono::steady_clock::now();
    if (env.rank == n - 1) {
      std::this_thread::sleep_for(9s);  // stays alive (store client) but never arrives
      report(true, "timeout test (the missing rank)");
    } else {
      try {
        g->all_reduce(out.view());
        report(false, "timeout test: all_reduce returned");
      } catch (const Error& e) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const std::string msg = e.what();
        std::printf("[rank %d] message: %s (%.1f s)\n", env.rank, msg.c_str(), s);
        report(e.kind() == ErrorKind::kTimeout &&
                   msg.find("ranks [" + std::to_string(n - 1)) != std::string::npos && s < 9,
               "timeout names the missing rank");
      }
    }
  }
  // Dead rank: the last rank aborts; the others fail fast (long timeout) naming it.
  {
    auto g = world->split(0, env.rank, "dead_test");
    g->set_timeout(120s);
    store_barrier(store, "before-dead-test", env.rank, n, 60s);
    const auto t0 = std::chrono::steady_clock::now();
    if (env.rank == n - 1) {
      g->abort("simulated failure of the last rank");
      std::this_thread::sleep_for(10s);
      report(true, "dead test (the dead rank)");
    } else {
      try {
        g->all_reduce(out.view());
        report(false, "dead test: all_reduce returned");
      } catch (const Error& e) {
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("[rank %d] message: %s (%.1f s)\n", env.rank, e.what(), s);
        report(std::string(e.what()).find("simulated failure") != std::string::npos && s < 20,
               "dead rank fails fast");
      }
    }
  }
  store_barrier(store, "end", env.rank, n, 60s);
  std::printf("[rank %d] %s (%d failures)\n", env.rank, failures ? "FAILED" : "ALL PASSED",
              failures);
  return failures ? 1 : 0;
}
