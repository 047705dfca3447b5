// NumpyRandomState's draws against numpy's legacy RandomState. The expected numbers are the
// widely published outputs of numpy.random.seed(0) (np.random.rand(5) and
// np.random.randint(0, 10, 5)); the randint ones are also re-derived below from the raw MT19937
// stream by numpy's masked-rejection rule.
#include "shardlm/data/numpy_random_state.h"

#include <gtest/gtest.h>

#include <vector>

#include "shardlm/data/numpy_sum.h"

namespace shardlm::data {
namespace {

TEST(NumpyRandomState, RandomSampleMatchesNumpySeedZero) {
  NumpyRandomState rs(0);
  const double expected[] = {0.5488135039273248, 0.7151893663724195, 0.6027633760716439,
                             0.5448831829968969, 0.4236547993389047};
  for (double e : expected) EXPECT_DOUBLE_EQ(rs.random_sample(), e);
}

TEST(NumpyRandomState, RandintMatchesNumpySeedZero) {
  NumpyRandomState rs(0);
  std::vector<int64_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(rs.randint(0, 10));
  EXPECT_EQ(got, (std::vector<int64_t>{5, 0, 3, 3, 7}));
  // The rule: low + (uint32 & 15), rejecting values > 9 (mask of 10 - 1 - 0 = 9 is 15).
  NumpyRandomState raw(0);
  EXPECT_EQ(raw.next_uint32(), 2357136044u);  // & 15 = 12 > 9: rejected
  EXPECT_EQ(raw.next_uint32() & 15u, 15u);    // rejected
  EXPECT_EQ(raw.next_uint32() & 15u, 5u);     // accepted: the first 5
  NumpyRandomState one(7);
  EXPECT_EQ(one.randint(4, 5), 4);  // a range of one value draws nothing
  EXPECT_EQ(one.next_uint32(), NumpyRandomState(7).next_uint32());
}

TEST(NumpyRandomState, ChoiceIsSearchsortedRightOfOneUniform) {
  // p = (1, 1/2, 1/3) normalised: cdf = (6/11, 9/11, 1). Seed 0's uniforms are 0.5488 (>= 6/11
  // -> 1), 0.7152 (-> 1), 0.6028 (-> 1), 0.5449 (< 6/11 -> 0), 0.4237 (-> 0).
  const std::vector<double> p = {6.0 / 11, 3.0 / 11, 2.0 / 11};
  NumpyRandomState rs(0);
  std::vector<size_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(rs.choice(p));
  EXPECT_EQ(got, (std::vector<size_t>{1, 1, 1, 0, 0}));
  // Frequencies follow p.
  NumpyRandomState many(1);
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 30000; ++i) ++counts[many.choice(p)];
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(counts[k] / 30000.0, p[k], 0.01);
}

TEST(NumpyRandomState, NumpySumIsPairwiseFromEightValues) {
  const std::vector<double> small = {1.0, 1e100, 1.0, -1e100};
  EXPECT_EQ(numpy_sum(small), ((1.0 + 1e100) + 1.0) - 1e100);  // sequential below 8
  const std::vector<double> a = {1e16, 1, 1, 1, 1, 1, 1, 1, -1e16, 3};
  const double pairwise =
      ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])) + a[8] + a[9];
  EXPECT_EQ(numpy_sum(a), pairwise);
  double sequential = 0;
  for (double v : a) sequential += v;
  EXPECT_NE(numpy_sum(a), sequential);  // the test can tell the two apart
}

}  // namespace
}  // namespace shardlm::data
