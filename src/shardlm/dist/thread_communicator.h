// ThreadWorld: N ranks as N threads of one process, and the in-process Communicator each rank
// gets from it. This is how every parallel layout is tested on the CPU (DESIGN §3).
//
// How an operation runs: each rank posts its buffers into a slot keyed by the operation's
// sequence number in the group; the last rank to arrive does the whole operation (reads every
// input, reduces in rank order 0, 1, ..., n-1, writes every output) and marks it done; wait()
// waits for done. So:
//  - reductions are deterministic and identical on every rank: acc = x_0; acc = acc op x_r
//    for r = 1..n-1, accumulated in the dtype's accumulator (fp64 in double, fp32 in float,
//    bf16/fp16 in float rounded once at the end, integers in 64-bit two's complement); max/min
//    propagate NaN (an overflow anywhere is seen everywhere);
//  - outputs may alias inputs (in-place all_reduce, reduce_scatter into a slice of the input);
//  - a send completes when the matching recv is posted (the later of the two copies).
// Failures: a rank that does not arrive before the caller's deadline, a rank marked dead
// (mark_rank_dead / TEST_kill_rank, or whose run() function threw or returned), or abort()
// makes every waiting member throw Error(kTimeout) naming the group, operation, its own rank
// and the missing ranks; the group is then aborted.
//
// Thread contract: ThreadWorld is thread-safe. Each Communicator it hands out is used by its
// rank's thread only. Ownership: communicators share the world's state, so the ThreadWorld
// object may be destroyed before them. No globals.
//
//   ThreadWorld world(4, {.timeout = std::chrono::seconds(10)});
//   auto errors = world.run([](Communicator& comm) {
//     OwnedTensor x = OwnedTensor::zeros(DType::kF32, {8});
//     comm.all_reduce(x.view());
//     auto tp = comm.split(comm.rank() / 2, comm.rank(), "tp");   // {0,1}, {2,3}
//   });
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shardlm/dist/communicator.h"

namespace shardlm::dist {

namespace detail {
struct ThreadWorldState;
struct ThreadGroupState;
}

struct ThreadWorldOptions {
  std::chrono::milliseconds timeout = kDefaultCommTimeout;  // default deadline of every op
  std::string name = "world";                               // the world group's name
};

class ThreadWorld {
 public:
  explicit ThreadWorld(int size, ThreadWorldOptions options = {});
  ~ThreadWorld();
  ThreadWorld(const ThreadWorld&) = delete;
  ThreadWorld& operator=(const ThreadWorld&) = delete;

  int size() const;

  // The world communicator of `rank`. Each rank asks exactly once (a second call throws
  // kInvalidArgument: two threads must never share a rank).
  std::unique_ptr<Communicator> communicator(int rank);

  // Marks a world rank dead: every operation (in any group) that waits for it fails at once
  // with a message naming it and `reason`; its own later operations throw too.
  void mark_rank_dead(int rank, const std::string& reason);
  bool is_rank_dead(int rank) const;
  // Fault-injection seam for tests.
  void TEST_kill_rank(int rank) { mark_rank_dead(rank, "killed by test (TEST_kill_rank)"); }

  // Runs fn(world communicator) on `size()` threads and joins them. A rank whose fn throws is
  // marked dead ("failed: <what>") and one whose fn returns is marked finished, so peers still
  // waiting for it fail fast instead of waiting for the timeout. Returns one exception_ptr per
  // rank, null where fn returned normally.
  std::vector<std::exception_ptr> run(const std::function<void(Communicator&)>& fn);

 private:
  std::shared_ptr<detail::ThreadWorldState> state_;
  std::shared_ptr<detail::ThreadGroupState> world_group_;
};

// Rethrows the first non-null error of run()'s result (lowest rank first); for tests.
void rethrow_first_error(const std::vector<std::exception_ptr>& errors);

}  // namespace shardlm::dist
