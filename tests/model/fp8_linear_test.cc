// Tests of Fp8Linear (model/fp8_linear.h) on the CPU: forward, input and weight gradients
// against a float64 reference that quantises with tensor/fp8.h's encoder (per-tensor scales
// from each operand's amax), for both recipes; accumulation into a wider gradient; and tensor
// parallelism as thread ranks: a row-parallel split (x's features and W's columns on two
// ranks) sums to the one-rank output only because the amaxes are reduced over the group.
#include "shardlm/model/fp8_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "shardlm/dist/thread_communicator.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/fp8.h"
#include "tests/testing/tensors.h"

namespace shardlm::model {
namespace {

using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

// A heap allocator for the workspace.
struct HeapAllocator : TensorAllocator {
  std::vector<OwnedTensor> owned;
  Tensor allocate(DType dtype, const Shape& shape) override {
    owned.push_back(OwnedTensor::empty(dtype, shape));
    return owned.back().view();
  }
};

// v quantised per tensor to `format` and dequantised: what the fp8 GEMMs multiply. The scale
// rule is ops.h's, in fp32.
std::vector<double> fake_quantized(const std::vector<double>& v, DType format, int margin = 0) {
  double amax = 0;
  for (double x : v) amax = std::max(amax, std::fabs(x));
  const float scale = std::ldexp(static_cast<float>(fp8_max(format)) / static_cast<float>(amax), -margin);
  const float scale_inv = 1.0f / scale;
  std::vector<double> q(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    q[i] = fp8_decode(format, fp8_encode(format, static_cast<float>(v[i]) * scale)) * scale_inv;
  return q;
}

// c[M,N] = a[M,K] · b[N,K]^T, or with trans_b: a[M,K] · b[K,N].
std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t M,
                           int64_t N, int64_t K, bool b_is_kn) {
  std::vector<double> c(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        c[m * N + n] += a[m * K + k] * (b_is_kn ? b[k * N + n] : b[n * K + k]);
  return c;
}
std::vector<double> transpose(const std::vector<double>& a, int64_t R, int64_t C) {
  std::vector<double> t(a.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) t[c * R + r] = a[r * C + c];
  return t;
}

TEST(Fp8Linear, MatchesTheQuantisedReference) {
  const int64_t N = 24, IC = 40, OC = 32;
  DeviceContext ctx = DeviceContext::cpu();
  for (Fp8Format format : {Fp8Format::kHybrid, Fp8Format::kE4M3}) {
    for (int margin : {0, 1}) {
      const Fp8Recipe recipe{format, margin};
      SCOPED_TRACE(recipe.name() + " margin " + std::to_string(margin));
      HeapAllocator alloc;
      const Fp8Workspace ws = Fp8Workspace::allocate(alloc, recipe, N, IC, OC, OC * IC);
      const Fp8Linear lin{recipe, {}};
      OwnedTensor x = random_tensor(DType::kF32, {N, IC}, 1, 3.0);
      OwnedTensor w = random_tensor(DType::kF32, {OC, IC}, 2, 0.05);
      OwnedTensor b = random_tensor(DType::kF32, {OC}, 3);
      OwnedTensor dy = random_tensor(DType::kF32, {N, OC}, 4, 1e-3);
      const std::vector<double> xq = fake_quantized(to_vector(x), recipe.forward_format(), margin);
      const std::vector<double> wq = fake_quantized(to_vector(w), recipe.forward_format(), margin);
      const std::vector<double> dyq = fake_quantized(to_vector(dy), recipe.gradient_format(), margin);

      OwnedTensor y = OwnedTensor::empty(DType::kF32, {N, OC});
      lin.forward(ctx, ws, y, x, w, b);
      std::vector<double> want = matmul(xq, wq, N, OC, IC, false);
      const std::vector<double> bv = to_vector(b);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < OC; ++o) want[n * OC + o] += bv[o];
      EXPECT_LT(rel_error(to_vector(y), want), 1e-6);
      // It is not the unquantised product (the test sees the quantisation).
      EXPECT_GT(rel_error(to_vector(y), matmul(to_vector(x), to_vector(w), N, OC, IC, false)), 1e-3);

      // din assigned; dW added onto random starting values in fp64 (a wider gradient).
      OwnedTensor din = random_tensor(DType::kF32, {N, IC}, 5);
      OwnedTensor dw = random_tensor(DType::kF64, {OC, IC}, 6);
      const std::vector<double> dw0 = to_vector(dw);
      lin.backward(ctx, ws, din, dw, /*accumulate=*/true, dy, x, w);
      EXPECT_LT(rel_error(to_vector(din), matmul(dyq, wq, N, IC, OC, true)), 1e-6);
      std::vector<double> dw_want = matmul(transpose(dyq, N, OC), transpose(xq, N, IC), OC, IC, N, false);
      for (size_t i = 0; i < dw_want.size(); ++i) dw_want[i] += dw0[i];
      EXPECT_LT(rel_error(to_vector(dw), dw_want), 1e-6);
      // Assigned, and the weight gradient alone.
      OwnedTensor dw2 = random_tensor(DType::kF32, {OC, IC}, 7);
      lin.backward(ctx, ws, Tensor(), dw2, /*accumulate=*/false, dy, x, w);
      EXPECT_LT(rel_error(to_vector(dw2),
                          matmul(transpose(dyq, N, OC), transpose(xq, N, IC), OC, IC, N, false)),
                1e-6);
    }
  }
}

// Two TP ranks split x's features and W's columns (a row-parallel linear): each computes a
// partial output, and the partials sum to the one-rank output (to fp32 summation order) when
// the amaxes are reduced over the group, because every element then gets the one-rank code.
// Without the reduction each rank scales its own half and the sum is measurably off.
TEST(Fp8Linear, RowParallelSplitQuantisesAsOneRank) {
  const int64_t N = 16, IC = 64, OC = 32, half = IC / 2;
  const Fp8Recipe recipe{Fp8Format::kHybrid, 0};
  OwnedTensor x = random_tensor(DType::kF32, {N, IC}, 11, 2.0);
  OwnedTensor w = random_tensor(DType::kF32, {OC, IC}, 12, 0.1);
  // One half much larger than the other: per-rank scales then differ a lot.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = half; c < IC; ++c) x.view().data<float>()[n * IC + c] *= 16.0f;
  DeviceContext cpu = DeviceContext::cpu();
  HeapAllocator alloc;
  const Fp8Workspace ws1 = Fp8Workspace::allocate(alloc, recipe, N, IC, OC, OC * IC);
  OwnedTensor y1 = OwnedTensor::empty(DType::kF32, {N, OC});
  Fp8Linear{recipe, {}}.forward(cpu, ws1, y1, x, w, Tensor());
  const std::vector<double> want = to_vector(y1);

  for (bool reduce : {true, false}) {
    std::vector<double> sum(N * OC, 0.0);
    std::mutex mu;
    dist::ThreadWorld world(2);
    dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
      DeviceContext ctx = DeviceContext::cpu();
      const int r = comm.rank();
      OwnedTensor xs = OwnedTensor::empty(DType::kF32, {N, half});
      OwnedTensor ws_ = OwnedTensor::empty(DType::kF32, {OC, half});
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < half; ++c)
          xs.view().data<float>()[n * half + c] = x.view().data<float>()[n * IC + r * half + c];
      for (int64_t o = 0; o < OC; ++o)
        for (int64_t c = 0; c < half; ++c)
          ws_.view().data<float>()[o * half + c] = w.view().data<float>()[o * IC + r * half + c];
      HeapAllocator a;
      const Fp8Workspace ws = Fp8Workspace::allocate(a, recipe, N, half, OC, OC * half);
      OwnedTensor y = OwnedTensor::empty(DType::kF32, {N, OC});
      const Fp8Linear lin{recipe, reduce ? std::vector<dist::Communicator*>{&comm}
                                         : std::vector<dist::Communicator*>{}};
      lin.forward(ctx, ws, y, xs, ws_, Tensor());
      std::lock_guard<std::mutex> lock(mu);
      const std::vector<double> part = to_vector(y);
      for (size_t i = 0; i < part.size(); ++i) sum[i] += part[i];
    }));
    if (reduce)
      EXPECT_LT(rel_error(sum, want), 1e-6);
    else
      EXPECT_GT(rel_error(sum, want), 1e-3);
  }
}

}  // namespace
}  // namespace shardlm::model
