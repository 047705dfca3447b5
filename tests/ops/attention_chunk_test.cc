// Tests of context-parallel attention chunks (attention_chunk_forward / _backward) against the
// whole-sequence ops: a chunk's out rows, lse entries and dq rows equal the whole sequence's at
// the chunk's global positions (CP-style load-balanced layouts, uneven chunks, rows out of
// position order); the dkv contributions of a partition of the sequence sum to the whole dk/dv;
// everything outside a chunk's rows and columns keeps a sentinel; chunk {0, T, 0} on qkv is
// attention_forward/backward exactly; finite differences; validation messages.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::dot;
using testing::from_vector;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

constexpr double kSentinel = 7.0;  // what untouched elements must still hold

struct Heads {
  int64_t NH, G, HS;
};
int64_t width(const Heads& h) { return h.G * (h.NH / h.G + 2) * h.HS; }

DropoutKey chunk_key() { return DropoutKey{17, 5, 2, 3, kDropoutAttentionProbs}; }

// Which columns of a fused-QKV row are query columns.
std::vector<bool> q_columns(const Heads& h) {
  const int64_t R = h.NH / h.G;
  std::vector<bool> q(width(h), false);
  for (int64_t g = 0; g < h.G; ++g)
    for (int64_t c = 0; c < R * h.HS; ++c) q[g * (R + 2) * h.HS + c] = true;
  return q;
}

// One rank's query rows: q_src [B, TQ, W] and the chunks inside it.
struct Layout {
  std::string name;
  int64_t TQ;
  std::vector<ops::AttentionChunk> chunks;
};

// Context parallelism with CP ranks and 2*CP chunks of c positions: rank r holds chunks r and
// 2*CP-1-r (Megatron's load balancing), in that order.
Layout cp_layout(int64_t cp, int64_t c, int64_t r) {
  return {"cp" + std::to_string(cp) + " rank " + std::to_string(r),
          2 * c,
          {{0, c, r * c}, {c, c, (2 * cp - 1 - r) * c}}};
}

// Copies rows `from` of a [B, Tfrom, C] tensor to rows `to` of a [B, Tto, C] tensor (vectors).
void copy_rows(const std::vector<double>& src, int64_t Tfrom, int64_t from,
               std::vector<double>* dst, int64_t Tto, int64_t to, int64_t rows, int64_t C,
               int64_t B) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < C; ++k)
        (*dst)[(b * Tto + to + i) * C + k] = src[(b * Tfrom + from + i) * C + k];
}

// q_src of a layout: each chunk's rows are qkv's rows at its positions (rows of no chunk are
// random and must not matter).
OwnedTensor gather_rows(DType dt, const std::vector<double>& whole, int64_t B, int64_t T, int64_t C,
                        const Layout& L, uint64_t seed) {
  std::vector<double> v = to_vector(random_tensor(DType::kF64, {B, L.TQ, C}, seed));
  for (const ops::AttentionChunk& c : L.chunks)
    copy_rows(whole, T, c.position, &v, L.TQ, c.row, c.rows, C, B);
  return from_vector(dt, {B, L.TQ, C}, v);
}

OwnedTensor filled(DType dt, const Shape& shape, double value) {
  return from_vector(dt, shape, std::vector<double>(shape.numel(), value));
}

struct ChunkCase {
  DType dt;
  Heads heads;
  double p;
};

std::string describe(const ChunkCase& c) {
  return std::string(dtype_name(c.dt)) + " NH=" + std::to_string(c.heads.NH) +
         " G=" + std::to_string(c.heads.G) + " p=" + std::to_string(c.p);
}

void PrintTo(const ChunkCase& c, std::ostream* os) { *os << describe(c); }

class AttentionChunkCases : public ::testing::TestWithParam<ChunkCase> {};

// Forward rows and lse entries, dq rows, untouched regions, and the dkv partition sum.
TEST_P(AttentionChunkCases, ChunksMatchWholeSequence) {
  DeviceContext ctx = DeviceContext::cpu();
  const ChunkCase cc = GetParam();
  const Heads hd = cc.heads;
  const DType dt = cc.dt;
  const double tol = dt == DType::kF64 ? 1e-12 : 1e-6;
  const double sum_tol = dt == DType::kF64 ? 1e-12 : 1e-5;  // fp32 sums in another order
  const int64_t B = 2, T = 12, W = width(hd), C = hd.NH * hd.HS;
  const ops::AttentionShape shape{hd.NH, hd.G, hd.HS};
  const std::vector<bool> is_q = q_columns(hd);

  const OwnedTensor qkv = convert(random_tensor(DType::kF64, {B, T, W}, 11, 1.5), dt);
  const OwnedTensor dout = convert(random_tensor(DType::kF64, {B, T, C}, 12), dt);
  OwnedTensor out = OwnedTensor::zeros(dt, {B, T, C}), lse = OwnedTensor::zeros(dt, {B, hd.NH, T});
  OwnedTensor dqkv = OwnedTensor::zeros(dt, {B, T, W});
  ops::attention_forward(ctx, out, lse, qkv, shape, cc.p, chunk_key());
  ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, cc.p, chunk_key());
  const std::vector<double> qkv_v = to_vector(qkv), dout_v = to_vector(dout),
                            out_v = to_vector(out), lse_v = to_vector(lse),
                            dqkv_v = to_vector(dqkv);

  // Two partitions of the sequence across "ranks": CP=2 with c=3, and uneven chunks held out of
  // position order; plus a lone chunk whose q_src has rows outside it.
  const std::vector<std::vector<Layout>> partitions = {
      {cp_layout(2, 3, 0), cp_layout(2, 3, 1)},
      {{"uneven", T, {{7, 5, 0}, {0, 2, 5}, {2, 5, 7}}}},
      {{"lone", 4, {{1, 2, 5}}}},
  };
  for (const std::vector<Layout>& partition : partitions) {
    std::vector<double> dkv_sum(B * T * W, 0.0);
    bool covers_sequence = true;
    for (const Layout& L : partition) {
      SCOPED_TRACE(describe(cc) + " " + L.name);
      if (L.name == "lone") covers_sequence = false;
      const OwnedTensor q_src = gather_rows(dt, qkv_v, B, T, W, L, 21);
      std::vector<double> dout_rows(B * L.TQ * C, 0.5);
      for (const ops::AttentionChunk& c : L.chunks)
        copy_rows(dout_v, T, c.position, &dout_rows, L.TQ, c.row, c.rows, C, B);
      const OwnedTensor dout_c = from_vector(dt, {B, L.TQ, C}, dout_rows);

      OwnedTensor out_c = filled(dt, {B, L.TQ, C}, kSentinel);
      OwnedTensor lse_c = filled(dt, {B, hd.NH, L.TQ}, kSentinel);
      for (const ops::AttentionChunk& c : L.chunks)
        ops::attention_chunk_forward(ctx, out_c, lse_c, q_src, qkv, shape, c, cc.p, chunk_key());
      // Expected: the whole sequence's rows at the chunk positions, the sentinel elsewhere.
      std::vector<double> want_out(B * L.TQ * C, kSentinel), want_lse(B * hd.NH * L.TQ, kSentinel);
      for (const ops::AttentionChunk& c : L.chunks) {
        copy_rows(out_v, T, c.position, &want_out, L.TQ, c.row, c.rows, C, B);
        copy_rows(lse_v, T, c.position, &want_lse, L.TQ, c.row, c.rows, 1, B * hd.NH);
      }
      EXPECT_LT(rel_error(to_vector(out_c), want_out), tol) << "out";
      EXPECT_LT(rel_error(to_vector(lse_c), want_lse), tol) << "lse";

      // Backward from the chunk's own saved out/lse.
      OwnedTensor dq = filled(dt, {B, L.TQ, W}, kSentinel);
      std::vector<double> want_dq(B * L.TQ * W, kSentinel);
      for (const ops::AttentionChunk& c : L.chunks) {
        OwnedTensor dkv = filled(dt, {B, T, W}, kSentinel);
        ops::attention_chunk_backward(ctx, dq, dkv, dout_c, q_src, qkv, out_c, lse_c, shape, c,
                                      cc.p, chunk_key());
        const std::vector<double> dkv_v = to_vector(dkv);
        // dkv: k/v columns of rows [0, position + rows) written, everything else the sentinel.
        bool untouched = true;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < T; ++j)
            for (int64_t k = 0; k < W; ++k) {
              const int64_t idx = (b * T + j) * W + k;
              if (!is_q[k] && j < c.position + c.rows)
                dkv_sum[idx] += dkv_v[idx];
              else
                untouched = untouched && dkv_v[idx] == kSentinel;
            }
        EXPECT_TRUE(untouched) << "dkv outside the chunk's keys / k,v columns was written";
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t k = 0; k < W; ++k)
              if (is_q[k])
                want_dq[(b * L.TQ + c.row + i) * W + k] = dqkv_v[(b * T + c.position + i) * W + k];
      }
      EXPECT_LT(rel_error(to_vector(dq), want_dq), tol) << "dq";
      // The untouched part of dq (k/v columns, rows of no chunk) is exactly the sentinel.
      const std::vector<double> dq_v = to_vector(dq);
      for (size_t n = 0; n < dq_v.size(); ++n)
        if (want_dq[n] == kSentinel) ASSERT_EQ(dq_v[n], kSentinel) << "dq element " << n;
    }
    if (!covers_sequence) continue;
    std::vector<double> want_kv(B * T * W, 0.0), got_kv(B * T * W, 0.0);
    for (size_t n = 0; n < want_kv.size(); ++n)
      if (!is_q[n % W]) {
        want_kv[n] = dqkv_v[n];
        got_kv[n] = dkv_sum[n];
      }
    EXPECT_LT(rel_error(got_kv, want_kv), sum_tol)
        << describe(cc) << " " << partition[0].name << ": sum of dkv contributions vs dk/dv";
  }
}

// Chunk {0, T, 0} with q_src = kv = qkv is the whole-sequence op, bit for bit.
TEST_P(AttentionChunkCases, WholeSequenceChunkIsAttention) {
  DeviceContext ctx = DeviceContext::cpu();
  const ChunkCase cc = GetParam();
  const Heads hd = cc.heads;
  const DType dt = cc.dt;
  const int64_t B = 2, T = 12, W = width(hd), C = hd.NH * hd.HS;
  const ops::AttentionShape shape{hd.NH, hd.G, hd.HS};
  const std::vector<bool> is_q = q_columns(hd);
  const OwnedTensor qkv = convert(random_tensor(DType::kF64, {B, T, W}, 31, 1.5), dt);
  const OwnedTensor dout = convert(random_tensor(DType::kF64, {B, T, C}, 32), dt);
  OwnedTensor out = OwnedTensor::zeros(dt, {B, T, C}), lse = OwnedTensor::zeros(dt, {B, hd.NH, T});
  OwnedTensor dqkv = OwnedTensor::zeros(dt, {B, T, W});
  ops::attention_forward(ctx, out, lse, qkv, shape, cc.p, chunk_key());
  ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, cc.p, chunk_key());

  const ops::AttentionChunk whole{0, T, 0};
  OwnedTensor out_c = filled(dt, {B, T, C}, kSentinel),
              lse_c = filled(dt, {B, hd.NH, T}, kSentinel);
  ops::attention_chunk_forward(ctx, out_c, lse_c, qkv, qkv, shape, whole, cc.p, chunk_key());
  EXPECT_EQ(to_vector(out_c), to_vector(out));
  EXPECT_EQ(to_vector(lse_c), to_vector(lse));
  OwnedTensor dq = filled(dt, {B, T, W}, kSentinel), dkv = filled(dt, {B, T, W}, kSentinel);
  ops::attention_chunk_backward(ctx, dq, dkv, dout, qkv, qkv, out, lse, shape, whole, cc.p,
                                chunk_key());
  const std::vector<double> dq_v = to_vector(dq), dkv_v = to_vector(dkv), want = to_vector(dqkv);
  for (size_t n = 0; n < want.size(); ++n) {
    const bool q = is_q[n % W];
    ASSERT_EQ(dq_v[n], q ? want[n] : kSentinel) << describe(cc) << " dq element " << n;
    ASSERT_EQ(dkv_v[n], q ? kSentinel : want[n]) << describe(cc) << " dkv element " << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, AttentionChunkCases,
                         ::testing::Values(ChunkCase{DType::kF64, {4, 2, 3}, 0.0},
                                           ChunkCase{DType::kF64, {4, 2, 3}, 0.1},
                                           ChunkCase{DType::kF64, {4, 4, 3}, 0.0},
                                           ChunkCase{DType::kF64, {4, 4, 3}, 0.1},
                                           ChunkCase{DType::kF32, {4, 2, 3}, 0.0},
                                           ChunkCase{DType::kF32, {4, 2, 3}, 0.1},
                                           ChunkCase{DType::kF32, {4, 4, 3}, 0.0},
                                           ChunkCase{DType::kF32, {4, 4, 3}, 0.1}));

// dq and dkv of one chunk against central differences of sum(out * dout) over q_src and kv.
TEST(AttentionChunk, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Heads hd{4, 2, 3};
  const int64_t B = 1, T = 6, TQ = 4, W = width(hd), C = hd.NH * hd.HS;
  const ops::AttentionShape shape{hd.NH, hd.G, hd.HS};
  const ops::AttentionChunk chunk{1, 2, 3};  // q_src rows 1..2 at positions 3..4; key 5 unused
  OwnedTensor q_src = random_tensor(DType::kF64, {B, TQ, W}, 41, 1.5);
  OwnedTensor kv = random_tensor(DType::kF64, {B, T, W}, 42, 1.5);
  const OwnedTensor dout = random_tensor(DType::kF64, {B, TQ, C}, 43);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {B, TQ, C});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF64, {B, hd.NH, TQ});
  for (double p : {0.0, 0.3}) {
    SCOPED_TRACE(::testing::Message() << "p=" << p);
    auto loss = [&] {
      ops::attention_chunk_forward(ctx, out, lse, q_src, kv, shape, chunk, p, chunk_key());
      return dot(out, dout);
    };
    loss();
    // Zero-filled: what the op leaves untouched has zero gradient too.
    OwnedTensor dq = OwnedTensor::zeros(DType::kF64, {B, TQ, W});
    OwnedTensor dkv = OwnedTensor::zeros(DType::kF64, {B, T, W});
    ops::attention_chunk_backward(ctx, dq, dkv, dout, q_src, kv, out, lse, shape, chunk, p,
                                  chunk_key());
    testing::expect_gradient("dq", q_src.view(), loss, dq, 1e-7);
    testing::expect_gradient("dkv", kv.view(), loss, dkv, 1e-7);
  }
}

TEST(AttentionChunk, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  const Heads hd{4, 2, 3};
  const int64_t B = 2, T = 12, TQ = 6, W = width(hd), C = hd.NH * hd.HS;
  const ops::AttentionShape shape{hd.NH, hd.G, hd.HS};
  const DropoutKey key = chunk_key();
  const OwnedTensor q_src = random_tensor(DType::kF32, {B, TQ, W}, 51);
  const OwnedTensor kv = random_tensor(DType::kF32, {B, T, W}, 52);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {B, TQ, C});
  OwnedTensor lse = OwnedTensor::zeros(DType::kF32, {B, hd.NH, TQ});
  const auto fwd = [&](const ops::AttentionChunk& c) {
    ops::attention_chunk_forward(ctx, out, lse, q_src, kv, shape, c, 0.0, key);
  };
  EXPECT_SHARDLM_ERROR(fwd({0, 0, 0}), ErrorKind::kInvalidArgument,
                       "chunk.rows must be >= 1, got 0");
  EXPECT_SHARDLM_ERROR(fwd({4, 3, 0}), ErrorKind::kInvalidArgument,
                       "[4, 7) must lie within q_src's TQ = 6");
  EXPECT_SHARDLM_ERROR(fwd({-1, 3, 0}), ErrorKind::kInvalidArgument, "q_src's TQ");
  EXPECT_SHARDLM_ERROR(fwd({0, 3, 10}), ErrorKind::kInvalidArgument,
                       "[10, 13) must lie within kv's T = 12");
  EXPECT_SHARDLM_ERROR(fwd({0, 3, -1}), ErrorKind::kInvalidArgument, "kv's T");
  const OwnedTensor kv_b1 = random_tensor(DType::kF32, {1, T, W}, 53);
  EXPECT_SHARDLM_ERROR(
      ops::attention_chunk_forward(ctx, out, lse, q_src, kv_b1, shape, {0, 3, 0}, 0.0, key),
      ErrorKind::kInvalidArgument, "same batch size");
  const OwnedTensor kv_w = random_tensor(DType::kF32, {B, T, W + 1}, 54);
  EXPECT_SHARDLM_ERROR(
      ops::attention_chunk_forward(ctx, out, lse, q_src, kv_w, shape, {0, 3, 0}, 0.0, key),
      ErrorKind::kInvalidArgument, "kv must be [B, T, G*(NH/G + 2)*HS]");
  OwnedTensor lse_bad = OwnedTensor::zeros(DType::kF32, {B, hd.NH, T});
  EXPECT_SHARDLM_ERROR(
      ops::attention_chunk_forward(ctx, out, lse_bad, q_src, kv, shape, {0, 3, 0}, 0.0, key),
      ErrorKind::kInvalidArgument, "lse has shape [2, 4, 12], expected [2, 4, 6]");
  const OwnedTensor kv_f64 = random_tensor(DType::kF64, {B, T, W}, 55);
  EXPECT_SHARDLM_ERROR(
      ops::attention_chunk_forward(ctx, out, lse, q_src, kv_f64, shape, {0, 3, 0}, 0.0, key),
      ErrorKind::kInvalidArgument, "kv is fp64");
  EXPECT_SHARDLM_ERROR(
      ops::attention_chunk_forward(ctx, out, lse, q_src, kv, shape, {0, 3, 0}, 1.0, key),
      ErrorKind::kInvalidArgument, "dropout probability");

  OwnedTensor dq = OwnedTensor::zeros(DType::kF32, {B, TQ, W});
  OwnedTensor dkv = OwnedTensor::zeros(DType::kF32, {B, T, W});
  OwnedTensor dout = OwnedTensor::zeros(DType::kF32, {B, TQ, C});
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_backward(ctx, dq, dq, dout, q_src, kv, out, lse, shape,
                                                     {0, 3, 0}, 0.0, key),
                       ErrorKind::kInvalidArgument,
                       "dkv has shape [2, 6, 24], expected [2, 12, 24]");
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_backward(ctx, dkv, dkv, dout, q_src, kv, out, lse,
                                                     shape, {0, 3, 0}, 0.0, key),
                       ErrorKind::kInvalidArgument, "dq has shape [2, 12, 24]");
  // dq as the first half of dkv's memory: right shapes, overlapping.
  const Tensor dq_alias = dkv.view().flat_view(0, Shape{B, TQ, W});
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_backward(ctx, dq_alias, dkv, dout, q_src, kv, out, lse,
                                                     shape, {0, 3, 0}, 0.0, key),
                       ErrorKind::kInvalidArgument, "dq overlaps dkv");
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_backward(ctx, dq, dkv, dout, q_src, kv, out, lse, shape,
                                                     {2, 5, 0}, 0.0, key),
                       ErrorKind::kInvalidArgument, "q_src's TQ = 6");
  OwnedTensor dout_bad = OwnedTensor::zeros(DType::kF32, {B, T, C});
  EXPECT_SHARDLM_ERROR(ops::attention_chunk_backward(ctx, dq, dkv, dout_bad, q_src, kv, out, lse,
                                                     shape, {0, 3, 0}, 0.0, key),
                       ErrorKind::kInvalidArgument, "dout has shape");
}

}  // namespace
}  // namespace shardlm
