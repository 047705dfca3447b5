// Trainer-level failure handling (issue 5, item 6): four data-parallel ranks as threads; one
// rank dies in the middle of an iteration, or stops responding there. Every other rank's
// Trainer must throw Error(kTimeout) naming the missing rank and the operation it was waiting
// in — fast for a dead rank, after --distributed-timeout-minutes for a hung one — never hang.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <sstream>
#include <thread>

#include "shardlm/data/mock_gpt_dataset.h"
#include "shardlm/dist/thread_communicator.h"
#include "shardlm/train/trainer.h"

namespace shardlm::train {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Training samples with a fault-injection seam: `before_get(index)` runs before each read.
class FaultySource : public data::SampleSource {
 public:
  FaultySource(int64_t n, int64_t seq, int64_t vocab, std::function<void(int64_t)> before_get)
      : inner_(n, seq, vocab, 7), before_get_(std::move(before_get)) {}
  int64_t size() const override { return inner_.size(); }
  int64_t seq_length() const override { return inner_.seq_length(); }
  void get(int64_t index, std::span<int32_t> tokens, std::span<float> mask) const override {
    if (before_get_) before_get_(index);
    inner_.get(index, tokens, mask);
  }

 private:
  data::MockGPTDataset inner_;
  std::function<void(int64_t)> before_get_;
};

TrainConfig config(double timeout_minutes) {
  TrainConfig c;
  c.model.num_layers = 1;
  c.model.hidden_size = 16;
  c.model.num_attention_heads = 2;
  c.model.seq_length = 8;
  c.model.vocab_size = 32;
  c.model.make_vocab_size_divisible_by = 32;
  c.micro_batch_size = 1;
  c.global_batch_size = 8;  // 2 micro-batches per rank with DP 4
  c.train_iters = 6;
  c.optimizer.lr = 1e-3;
  c.optimizer.lr_decay_style = "constant";
  c.data.mock_data = true;
  c.logging.eval_iters = 0;
  c.device = "cpu";
  c.parallel.distributed_timeout_minutes = timeout_minutes;
  return c;
}

constexpr int kRanks = 4, kVictim = 2;
// The victim's first sample of micro-batch 1 of iteration 4 (8 samples per iteration, its
// micro-batch m covers sample 8·(it-1) + 4·m + rank): mid-step, after micro-batch 0's backward.
constexpr int64_t kFaultSample = 8 * 3 + 4 * 1 + kVictim;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs the job with `fault` injected on the victim; returns every rank's error.
std::vector<std::exception_ptr> run_job(const TrainConfig& cfg, dist::ThreadWorld& world,
                                        const std::function<void()>& fault,
                                        std::atomic<int>& failed_survivors) {
  const dist::ParallelLayout layout = dist::ParallelLayout::create(kRanks, cfg.parallel_sizes());
  return world.run([&](dist::Communicator& comm) {
    const int r = comm.rank();
    DeviceContext device = DeviceContext::cpu();
    dist::RankContext rc = dist::RankContext::create(device, comm.split(0, r, "world"), layout, r);
    auto source = std::make_unique<FaultySource>(1000, 8, 32, [&, r](int64_t index) {
      if (r == kVictim && index == kFaultSample) fault();
    });
    std::ostringstream log;
    try {
      Trainer t(cfg, rc, log, std::move(source));
      t.train();
    } catch (...) {
      if (r != kVictim) ++failed_survivors;
      throw;
    }
  });
}

void expect_named_timeout(const std::exception_ptr& e, int rank, const std::string& cause) {
  ASSERT_TRUE(e) << "rank " << rank << " did not fail";
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    const std::string what = err.what();
    EXPECT_EQ(err.kind(), ErrorKind::kTimeout) << what;
    // The operation this rank waited in (the data-parallel gradient all-reduce of the step)...
    EXPECT_NE(what.find("[group 'dp'] all_reduce("), std::string::npos) << what;
    EXPECT_NE(what.find("(world rank " + std::to_string(rank) + ")"), std::string::npos) << what;
    // ...and the rank that is missing, with why.
    EXPECT_NE(what.find(cause), std::string::npos) << what;
  } catch (...) {
    ADD_FAILURE() << "rank " << rank << " threw something other than shardlm::Error";
  }
}

TEST(TrainerFaults, RankKilledMidStepFailsEveryOtherRankFastNamingIt) {
  // A long deadline: survivors must notice the death, not wait for the timeout.
  const TrainConfig cfg = config(/*timeout_minutes=*/1.0);
  dist::ThreadWorld world(kRanks, {.timeout = 60s});
  std::atomic<int> failed{0};
  const auto t0 = Clock::now();
  auto errors = run_job(cfg, world, [&] {
    world.TEST_kill_rank(kVictim);
    throw std::runtime_error("rank 2 crashed (test)");
  }, failed);
  const double elapsed = seconds_since(t0);
  EXPECT_LT(elapsed, 30.0) << "survivors waited for the 60 s timeout instead of the death";
  for (int r = 0; r < kRanks; ++r)
    if (r != kVictim) expect_named_timeout(errors[r], r, "rank 2 (world rank 2) is dead (killed by test");
  EXPECT_TRUE(errors[kVictim]);
}

TEST(TrainerFaults, HungRankTimesOutEveryOtherRankNamingIt) {
  const double timeout_s = 1.0;
  const TrainConfig cfg = config(timeout_s / 60.0);
  dist::ThreadWorld world(kRanks, {.timeout = 60s});
  std::atomic<int> failed{0};
  const auto t0 = Clock::now();
  auto errors = run_job(cfg, world, [&] {
    // Stops responding until every survivor gave up (bounded, so the test cannot hang).
    while (failed.load() < kRanks - 1 && seconds_since(t0) < 60) std::this_thread::sleep_for(5ms);
  }, failed);
  EXPECT_EQ(failed.load(), kRanks - 1);
  for (int r = 0; r < kRanks; ++r)
    if (r != kVictim) expect_named_timeout(errors[r], r, "(world ranks [2]) did not arrive");
}

}  // namespace
}  // namespace shardlm::train
