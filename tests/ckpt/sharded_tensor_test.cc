// copy_overlap: the generic reshard step, tested as a property against element-by-element
// indexing of the global tensor: for random boxes and flat ranges of random global shapes,
// every element the two regions share is copied, to the right place, and nothing else.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "shardlm/ckpt/sharded_tensor.h"

namespace shardlm::ckpt {
namespace {

// Global row-major index of the k-th element of a region (reference, element by element).
int64_t global_index(const ShardRegion& r, const std::vector<int64_t>& gshape, int64_t k) {
  int64_t pos = r.flat_begin + k, g = 0;
  std::vector<int64_t> coord(r.extents.size());
  for (int a = static_cast<int>(r.extents.size()) - 1; a >= 0; --a) {
    coord[a] = pos % r.extents[a] + r.offsets[a];
    pos /= r.extents[a];
  }
  for (size_t a = 0; a < coord.size(); ++a) g = g * gshape[a] + coord[a];
  return g;
}

ShardRegion random_region(std::mt19937& g, const std::vector<int64_t>& shape) {
  ShardRegion r;
  for (int64_t d : shape) {
    const int64_t lo = std::uniform_int_distribution<int64_t>(0, d - 1)(g);
    const int64_t hi = std::uniform_int_distribution<int64_t>(lo + 1, d)(g);
    r.offsets.push_back(lo);
    r.extents.push_back(hi - lo);
  }
  if (g() % 2) {
    const int64_t n = r.box_numel();
    const int64_t b = std::uniform_int_distribution<int64_t>(0, n)(g);
    r.flat_begin = b;
    r.flat_end = std::uniform_int_distribution<int64_t>(b, n)(g);
  }
  return r;
}

TEST(CopyOverlap, MatchesElementwiseReferenceOnRandomRegions) {
  std::mt19937 g(7);
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<int64_t> shape;
    const int rank = 1 + static_cast<int>(g() % 3);
    for (int a = 0; a < rank; ++a) shape.push_back(1 + static_cast<int64_t>(g() % 7));
    const ShardRegion src = random_region(g, shape), dst = random_region(g, shape);
    // Source holds its elements' global indices; destination starts at -1.
    std::vector<int64_t> src_data(static_cast<size_t>(src.numel()));
    for (int64_t k = 0; k < src.numel(); ++k) src_data[k] = global_index(src, shape, k);
    std::vector<int64_t> dst_data(static_cast<size_t>(dst.numel()), -1);
    const int64_t n = copy_overlap(dst, reinterpret_cast<std::byte*>(dst_data.data()), src,
                                   reinterpret_cast<const std::byte*>(src_data.data()), 8);
    std::set<int64_t> in_src(src_data.begin(), src_data.end());
    int64_t expected = 0;
    for (int64_t k = 0; k < dst.numel(); ++k) {
      const int64_t gi = global_index(dst, shape, k);
      if (in_src.count(gi)) {
        ++expected;
        EXPECT_EQ(dst_data[k], gi) << "trial " << trial << " element " << k;
      } else {
        EXPECT_EQ(dst_data[k], -1) << "trial " << trial << " element " << k;
      }
    }
    EXPECT_EQ(n, expected) << "trial " << trial << " dst " << dst.to_string() << " src "
                           << src.to_string();
  }
}

TEST(ShardRegion, FromParameterSplit) {
  model::Parameter p;
  p.spec.name = "w";
  p.spec.global_shape = Shape{8, 6};
  p.spec.split = {.tp_dim = 1, .tp_rank = 2, .tp_size = 3};
  p.local_shape = Shape{8, 2};
  const ShardRegion r = region_of(p);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(r.extents, (std::vector<int64_t>{8, 2}));
  EXPECT_TRUE(r.is_whole_box());
  // And it agrees with the registry's own global_index for every local element.
  for (int64_t i = 0; i < 16; ++i)
    EXPECT_EQ(global_index(r, {8, 6}, i), p.global_index(i));
  const ShardRegion n = narrowed(r, 3, 11);
  EXPECT_EQ(n.numel(), 8);
  EXPECT_THROW(ShardRegion({{0, 4}, {8, 3}}).validate(Shape{8, 6}, "w"), Error);
}

// pieces_of covers every local element exactly once, each at the global index the registry
// gives it, for one-block, chunked (SwiGLU fc1) and explicit-run (replicated query groups)
// splits, whole and narrowed to every flat range; replica runs are flagged.
TEST(ShardRegion, ParameterPiecesAgreeWithGlobalIndex) {
  std::vector<model::Parameter> params(3);
  params[0].spec = {"block", {8, 3}, model::Split::along(0, 1, 2), true, model::Init::zeros()};
  params[1].spec = {"chunks", {8, 3}, model::Split::along(0, 1, 2, 2), true, model::Init::zeros()};
  params[2].spec = {"runs", {12, 3},
                    model::Split::of_runs(0, 1, 4, {{2, 2, false}, {4, 2, true}}), true,
                    model::Init::zeros()};
  params[0].local_shape = params[1].local_shape = params[2].local_shape = Shape{4, 3};
  const std::vector<size_t> expected_pieces = {1, 2, 2};
  for (size_t k = 0; k < params.size(); ++k) {
    const model::Parameter& p = params[k];
    SCOPED_TRACE(p.spec.name);
    EXPECT_EQ(pieces_of(p).size(), expected_pieces[k]);
    for (int64_t begin = 0; begin <= 12; ++begin) {
      for (int64_t end = begin; end <= 12; ++end) {
        int64_t next = begin;
        for (const ParameterPiece& piece : pieces_of(p, begin, end)) {
          ASSERT_EQ(piece.local_begin, next);
          ASSERT_EQ(piece.region.numel(), piece.local_end - piece.local_begin);
          for (int64_t i = 0; i < piece.region.numel(); ++i)
            ASSERT_EQ(global_index(piece.region, {p.spec.global_shape[0], 3}, i),
                      p.global_index(piece.local_begin + i))
                << "[" << begin << ", " << end << ") element " << i;
          EXPECT_EQ(piece.replica, k == 2 && piece.local_begin >= 6);
          next = piece.local_end;
        }
        EXPECT_EQ(next, end);
      }
    }
  }
}

}  // namespace
}  // namespace shardlm::ckpt
