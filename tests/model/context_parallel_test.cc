// Context parallelism's sequence split (model/context_parallel.h): Megatron's load-balanced
// chunk assignment, position runs, the all-gather / reduce-scatter between a rank's chunks
// and whole sequences, and the all-to-all between a rank's tokens and its share of the heads
// (--cp-comm-type a2a), on thread ranks.
#include "shardlm/model/context_parallel.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/dist/rank_threads.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

std::vector<int64_t> positions(const ContextParallel& cp, int64_t seq) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < cp.local_length(seq); ++t) out.push_back(cp.global_position(t, seq));
  return out;
}

TEST(ContextParallelSplit, RanksHoldAnEarlyAndALateChunk) {
  // T = 8, CP = 2: chunks of 2; rank 0 holds 0 1 | 6 7, rank 1 holds 2 3 | 4 5 (Megatron).
  dist::testing::run_ranks(2, [](dist::Communicator& comm) {
    const ContextParallel cp{&comm};
    const std::vector<int64_t> want =
        comm.rank() == 0 ? std::vector<int64_t>{0, 1, 6, 7} : std::vector<int64_t>{2, 3, 4, 5};
    EXPECT_EQ(positions(cp, 8), want);
    EXPECT_EQ(cp.chunk_length(8), 2);
    // Runs break at the chunk boundary: local [1, 4) of rank 0 is global 1 then 6 7.
    const std::vector<PositionRun> runs = position_runs(cp, 8, 1, 3);
    ASSERT_EQ(runs.size(), 2u);
    EXPECT_EQ(runs[0].local, 1);
    EXPECT_EQ(runs[0].count, 1);
    EXPECT_EQ(runs[0].global, comm.rank() == 0 ? 1 : 3);
    EXPECT_EQ(runs[1].local, 2);
    EXPECT_EQ(runs[1].count, 2);
    EXPECT_EQ(runs[1].global, comm.rank() == 0 ? 6 : 4);
  });
  // Without CP: one chunk, positions are themselves.
  const ContextParallel none;
  EXPECT_EQ(positions(none, 4), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(position_runs(none, 4, 1, 3).size(), 1u);
}

TEST(ContextParallelSplit, GatherThenReduceScatterRoundTrips) {
  // Every rank fills its local rows [B, T/CP, W] with values naming (b, global position, w);
  // the gather must put each at its global place, and reduce-scatter of the gathered sequence
  // (identical on every rank) must give back CP times the local rows.
  constexpr int64_t B = 2, T = 16, W = 3;
  for (int P : {2, 4}) {
    dist::testing::run_ranks(P, [&](dist::Communicator& comm) {
      const ContextParallel cp{&comm};
      DeviceContext ctx = DeviceContext::cpu();
      const int64_t TL = T / P;
      OwnedTensor local = OwnedTensor::empty(DType::kF64, {B, TL, W});
      auto value = [](int64_t b, int64_t pos, int64_t w) { return 1000.0 * b + 10.0 * pos + w; };
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < TL; ++t)
          for (int64_t w = 0; w < W; ++w)
            local.view().data<double>()[(b * TL + t) * W + w] = value(b, cp.global_position(t, T), w);
      OwnedTensor full = OwnedTensor::empty(DType::kF64, {B, T, W});
      OwnedTensor staging = OwnedTensor::empty(DType::kF64, {B * T * W});
      gather_sequence(ctx, cp, B, T, full.view(), local.view(), staging.view());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t w = 0; w < W; ++w)
            ASSERT_EQ(full.view().data<double>()[(b * T + t) * W + w], value(b, t, w))
                << "P " << P << " b " << b << " position " << t;
      OwnedTensor back = OwnedTensor::empty(DType::kF64, {B, TL, W});
      reduce_scatter_sequence(ctx, cp, B, T, back.view(), full.view(), staging.view());
      for (int64_t i = 0; i < B * TL * W; ++i)
        ASSERT_EQ(back.view().data<double>()[i], P * local.view().data<double>()[i]);
    });
  }
}

TEST(ContextParallelSplit, AllToAllTradesTokensForHeads) {
  // --cp-comm-type a2a: local rows [B, T/CP, W] whose W = CP·S columns are CP shares; rank p
  // must get share p of every token in global order, and the inverse must give local back.
  constexpr int64_t B = 2, T = 16, S = 3;
  for (int P : {2, 4}) {
    dist::testing::run_ranks(P, [&](dist::Communicator& comm) {
      const ContextParallel cp{&comm, /*all_to_all=*/true};
      DeviceContext ctx = DeviceContext::cpu();
      const int64_t TL = T / P, W = P * S;
      auto value = [](int64_t b, int64_t pos, int64_t w) {
        return 1000.0 * b + 10.0 * pos + 0.01 * w;
      };
      OwnedTensor local = OwnedTensor::empty(DType::kF64, {B, TL, W});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < TL; ++t)
          for (int64_t w = 0; w < W; ++w)
            local.view().data<double>()[(b * TL + t) * W + w] =
                value(b, cp.global_position(t, T), w);
      OwnedTensor index = OwnedTensor::empty(DType::kI32, {4 * B * T});
      OwnedTensor send = OwnedTensor::empty(DType::kF64, {B * T * S});
      OwnedTensor recv = OwnedTensor::empty(DType::kF64, {B * T * S});
      const AllToAllBuffers bufs{index.view(), send.view(), recv.view()};
      all_to_all_index(ctx, cp, B, T, bufs.index);
      OwnedTensor heads = OwnedTensor::empty(DType::kF64, {B, T, S});
      sequence_to_heads(ctx, cp, B, T, heads.view(), local.view(), bufs);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t pos = 0; pos < T; ++pos)
          for (int64_t w = 0; w < S; ++w)
            ASSERT_EQ(heads.view().data<double>()[(b * T + pos) * S + w],
                      value(b, pos, comm.rank() * S + w))
                << "P " << P << " b " << b << " position " << pos;
      OwnedTensor back = OwnedTensor::empty(DType::kF64, {B, TL, W});
      heads_to_sequence(ctx, cp, B, T, back.view(), heads.view(), bufs);
      for (int64_t i = 0; i < B * TL * W; ++i)
        ASSERT_EQ(back.view().data<double>()[i], local.view().data<double>()[i]);
      // In place (as the layer's backward exchanges dout and dqkv): same result.
      heads_to_sequence(ctx, cp, B, T, heads.view(), heads.view(), bufs);
      for (int64_t i = 0; i < B * TL * W; ++i)
        ASSERT_EQ(heads.view().data<double>()[i], local.view().data<double>()[i]);
    });
  }
}

}  // namespace
}  // namespace shardlm::model
