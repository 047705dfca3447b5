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

// numpy's legacy_random_geometric on seed 0's uniforms (u above): below p = 1/3 the inversion
// ceil(log1p(-u) / log(1 - p)); from 1/3 up the CDF search. Worked by hand: for p = 0.2,
// log1p(-u) / log(0.8) = 3.567, 5.628, 4.137, 3.528, 2.469; for p = 0.5 the CDF is
// 0.5, 0.75, ..., and only u = 0.4237 is <= 0.5.
TEST(NumpyRandomState, GeometricMatchesNumpysLegacyAlgorithms) {
  NumpyRandomState rs(0);
  std::vector<int64_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(rs.geometric(0.2));
  EXPECT_EQ(got, (std::vector<int64_t>{4, 6, 5, 4, 3}));
  NumpyRandomState search(0);
  got.clear();
  for (int i = 0; i < 5; ++i) got.push_back(search.geometric(0.5));
  EXPECT_EQ(got, (std::vector<int64_t>{2, 2, 2, 2, 1}));
  NumpyRandomState small_p(0);
  EXPECT_EQ(small_p.geometric(0.05), 16);  // ceil(15.52): inversion again
  // Each draw takes one uniform, whichever branch: the streams stay aligned.
  NumpyRandomState a(9), b(9);
  a.geometric(0.2);
  a.geometric(0.9);
  b.random_sample();
  b.random_sample();
  EXPECT_EQ(a.next_uint32(), b.next_uint32());
  EXPECT_EQ(NumpyRandomState(3).geometric(1.0), 1);
  // Mean 1 / p on both sides of the switch.
  for (double p : {0.2, 0.34, 0.3, 0.6}) {
    NumpyRandomState many(11);
    double sum = 0;
    for (int i = 0; i < 40000; ++i) sum += static_cast<double>(many.geometric(p));
    EXPECT_NEAR(sum / 40000, 1.0 / p, 0.05 / p) << "p = " << p;
  }
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
