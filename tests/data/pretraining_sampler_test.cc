// pretraining_micro_batch_indices against Megatron's MegatronPretrainingSampler: a serial port of
// its __iter__ (batches of mbs*dp consecutive indices, rank r takes [r*mbs, (r+1)*mbs)).
#include "shardlm/data/pretraining_sampler.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "shardlm/base/error.h"

namespace shardlm::data {
namespace {

// Megatron's MegatronPretrainingSampler.__iter__ with drop_last=True, one rank's batches.
std::vector<std::vector<int64_t>> megatron_sampler(int64_t total, int64_t consumed, int64_t mbs,
                                                   int64_t rank, int64_t dp) {
  std::vector<std::vector<int64_t>> out;
  std::vector<int64_t> batch;
  for (int64_t idx = consumed; idx < total; ++idx) {
    batch.push_back(idx);
    if (static_cast<int64_t>(batch.size()) == mbs * dp) {
      out.emplace_back(batch.begin() + rank * mbs, batch.begin() + (rank + 1) * mbs);
      batch.clear();
    }
  }
  return out;
}

TEST(PretrainingSampler, RanksPartitionAConsecutiveRange) {
  for (int64_t dp : {1, 2, 3, 8}) {
    for (int64_t mbs : {1, 2, 5}) {
      const int64_t consumed = 17;
      std::set<int64_t> all;
      size_t total = 0;
      for (int64_t r = 0; r < dp; ++r) {
        const auto idx = pretraining_micro_batch_indices(consumed, mbs, r, dp);
        ASSERT_EQ(static_cast<int64_t>(idx.size()), mbs);
        total += idx.size();
        all.insert(idx.begin(), idx.end());
      }
      EXPECT_EQ(all.size(), total) << "ranks overlap, dp " << dp << " mbs " << mbs;
      EXPECT_EQ(*all.begin(), consumed);
      EXPECT_EQ(*all.rbegin(), consumed + mbs * dp - 1);
    }
  }
}

TEST(PretrainingSampler, MatchesMegatronSerialEnumeration) {
  const int64_t total = 200;
  for (int64_t dp : {1, 2, 4}) {
    for (int64_t mbs : {1, 3}) {
      for (int64_t r = 0; r < dp; ++r) {
        const auto expected = megatron_sampler(total, 0, mbs, r, dp);
        for (size_t m = 0; m < expected.size(); ++m) {
          EXPECT_EQ(pretraining_micro_batch_indices(static_cast<int64_t>(m) * mbs * dp, mbs, r, dp),
                    expected[m])
              << "dp " << dp << " mbs " << mbs << " rank " << r << " micro-batch " << m;
        }
      }
    }
  }
}

TEST(PretrainingSampler, ResumesFromConsumedSamples) {
  // A run resumed at consumed_samples sees the same batches as the tail of an unbroken run.
  const int64_t total = 300, mbs = 2, dp = 3;
  for (int64_t r = 0; r < dp; ++r) {
    const auto full = megatron_sampler(total, 0, mbs, r, dp);
    const int64_t skip = 7;  // micro-batches already consumed
    const auto resumed = megatron_sampler(total, skip * mbs * dp, mbs, r, dp);
    ASSERT_EQ(resumed.size() + skip, full.size());
    for (size_t m = 0; m < resumed.size(); ++m) {
      EXPECT_EQ(resumed[m], full[m + skip]);
      EXPECT_EQ(pretraining_micro_batch_indices((skip + m) * mbs * dp, mbs, r, dp), resumed[m]);
    }
  }
}

TEST(PretrainingSampler, RejectsBadArguments) {
  EXPECT_THROW(pretraining_micro_batch_indices(-1, 2, 0, 1), Error);
  EXPECT_THROW(pretraining_micro_batch_indices(0, 0, 0, 1), Error);
  EXPECT_THROW(pretraining_micro_batch_indices(0, 2, 0, 0), Error);
  EXPECT_THROW(pretraining_micro_batch_indices(0, 2, 2, 2), Error);
  EXPECT_THROW(pretraining_micro_batch_indices(0, 2, -1, 2), Error);
}

}  // namespace
}  // namespace shardlm::data
