// Tests of adamw_step against a naive fp64 AdamW (apex FusedAdam adam_w_mode) over several
// steps, the sign-like first step, fp32 vs fp64, the compute copy written in the same pass
// (bit-identical to a step followed by copy), and argument validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

constexpr int64_t kN = 301;

struct State {
  std::vector<double> p, m, v;
};

void reference_step(State& s, const std::vector<double>& g, const ops::AdamWParams& hp) {
  for (size_t i = 0; i < s.p.size(); ++i) {
    s.m[i] = hp.beta1 * s.m[i] + (1 - hp.beta1) * g[i];
    s.v[i] = hp.beta2 * s.v[i] + (1 - hp.beta2) * g[i] * g[i];
    const double m_hat = s.m[i] / (1 - std::pow(hp.beta1, static_cast<double>(hp.step)));
    const double v_hat = s.v[i] / (1 - std::pow(hp.beta2, static_cast<double>(hp.step)));
    s.p[i] -= hp.lr * (m_hat / (std::sqrt(v_hat) + hp.eps) + hp.weight_decay * s.p[i]);
  }
}

TEST(AdamW, MatchesReferenceOverSeveralSteps) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor p = random_tensor(DType::kF64, {kN}, 1);
  OwnedTensor m = OwnedTensor::zeros(DType::kF64, {kN}), v = OwnedTensor::zeros(DType::kF64, {kN});
  State ref{to_vector(p), to_vector(m), to_vector(v)};
  ops::AdamWParams hp;
  hp.lr = 3e-3;
  hp.beta1 = 0.85;
  hp.beta2 = 0.97;
  hp.eps = 1e-6;
  hp.weight_decay = 0.1;
  for (int64_t step = 1; step <= 4; ++step) {
    hp.step = step;
    OwnedTensor g = random_tensor(DType::kF64, {kN}, 100 + step, 0.5);
    ops::adamw_step(ctx, p, g, m, v, hp);
    reference_step(ref, to_vector(g), hp);
    EXPECT_LT(rel_error(to_vector(p), ref.p), 1e-14) << step;
    EXPECT_LT(rel_error(to_vector(m), ref.m), 1e-14) << step;
    EXPECT_LT(rel_error(to_vector(v), ref.v), 1e-14) << step;
  }
}

TEST(AdamW, FirstStepMovesEachParameterByLrAgainstTheGradientSign) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor p = random_tensor(DType::kF64, {kN}, 2), g = random_tensor(DType::kF64, {kN}, 3);
  OwnedTensor m = OwnedTensor::zeros(DType::kF64, {kN}), v = OwnedTensor::zeros(DType::kF64, {kN});
  const std::vector<double> p0 = to_vector(p), gv = to_vector(g);
  ops::AdamWParams hp;
  hp.lr = 1e-2;
  hp.eps = 1e-12;
  ops::adamw_step(ctx, p, g, m, v, hp);
  const std::vector<double> p1 = to_vector(p);
  for (int64_t i = 0; i < kN; ++i) EXPECT_NEAR(p1[i] - p0[i], gv[i] > 0 ? -1e-2 : 1e-2, 1e-9) << i;
}

TEST(AdamW, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<double> res[2][3];
  for (int k = 0; k < 2; ++k) {
    const DType d = k == 0 ? DType::kF64 : DType::kF32;
    OwnedTensor p = convert(random_tensor(DType::kF64, {kN}, 4), d);
    OwnedTensor m = OwnedTensor::zeros(d, {kN}), v = OwnedTensor::zeros(d, {kN});
    ops::AdamWParams hp;
    hp.lr = 1e-3;
    hp.weight_decay = 0.01;
    for (int64_t step = 1; step <= 3; ++step) {
      hp.step = step;
      ops::adamw_step(ctx, p, convert(random_tensor(DType::kF64, {kN}, 200 + step), d), m, v, hp);
    }
    res[k][0] = to_vector(p);
    res[k][1] = to_vector(m);
    res[k][2] = to_vector(v);
  }
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_error(res[1][i], res[0][i]), 1e-6) << i;
}

// The mixed-precision compute copy written by the step equals adamw_step then copy(compute,
// params) bit for bit, for each master dtype and compute dtype; params and moments are
// unchanged by asking for it.
TEST(AdamW, ComputeCopyEqualsStepThenCopyBitForBit) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType master : {DType::kF32, DType::kF64}) {
    for (DType compute : {DType::kBF16, DType::kF16, DType::kF32}) {
      SCOPED_TRACE(std::string(dtype_name(master)) + " -> " + dtype_name(compute));
      OwnedTensor p = convert(random_tensor(DType::kF64, {kN}, 9), master);
      OwnedTensor m = OwnedTensor::zeros(master, {kN}), v = OwnedTensor::zeros(master, {kN});
      OwnedTensor p_ref = testing::clone(p), m_ref = testing::clone(m), v_ref = testing::clone(v);
      OwnedTensor c = convert(random_tensor(DType::kF64, {kN}, 10), compute);  // stale values
      OwnedTensor c_ref = OwnedTensor::empty(compute, {kN});
      ops::AdamWParams hp;
      hp.lr = 1e-2;
      hp.weight_decay = 0.1;
      for (int64_t step = 1; step <= 3; ++step) {
        hp.step = step;
        const OwnedTensor g = convert(random_tensor(DType::kF64, {kN}, 300 + step), master);
        ops::adamw_step(ctx, p, g, m, v, hp, c);
        ops::adamw_step(ctx, p_ref, g, m_ref, v_ref, hp);
        ops::copy(ctx, c_ref, p_ref);
        auto same_bits = [](const Tensor& got, const Tensor& want) {
          return std::memcmp(got.raw(), want.raw(), want.nbytes()) == 0;
        };
        EXPECT_TRUE(same_bits(c, c_ref)) << "compute copy, step " << step;
        EXPECT_TRUE(same_bits(p, p_ref)) << "params, step " << step;
        EXPECT_TRUE(same_bits(m, m_ref)) << "exp_avg, step " << step;
        EXPECT_TRUE(same_bits(v, v_ref)) << "exp_avg_sq, step " << step;
      }
    }
  }
}

// grad_scale (clipping folded into the step) gives the bits of scale_inplace + adamw_step, and
// leaves the gradients unwritten.
TEST(AdamW, GradScaleEqualsScaleInplaceThenStep) {
  DeviceContext ctx = DeviceContext::cpu();
  for (DType master : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(dtype_name(master));
    OwnedTensor p = convert(random_tensor(DType::kF64, {kN}, 19), master);
    OwnedTensor m = OwnedTensor::zeros(master, {kN}), v = OwnedTensor::zeros(master, {kN});
    OwnedTensor p_ref = testing::clone(p), m_ref = testing::clone(m), v_ref = testing::clone(v);
    ops::AdamWParams hp;
    hp.lr = 1e-2;
    hp.weight_decay = 0.1;
    for (int64_t step = 1; step <= 3; ++step) {
      hp.step = step;
      const OwnedTensor g = convert(random_tensor(DType::kF64, {kN}, 400 + step), master);
      const OwnedTensor g_before = testing::clone(g);
      OwnedTensor g_scaled = testing::clone(g);
      const double coeff = 0.3 / step;
      ops::scale_inplace(ctx, g_scaled, coeff);
      ops::adamw_step(ctx, p_ref, g_scaled, m_ref, v_ref, hp);
      ops::AdamWParams scaled = hp;
      scaled.grad_scale = coeff;
      ops::adamw_step(ctx, p, g, m, v, scaled);
      EXPECT_EQ(std::memcmp(p.view().raw(), p_ref.view().raw(), p.view().nbytes()), 0) << step;
      EXPECT_EQ(std::memcmp(m.view().raw(), m_ref.view().raw(), m.view().nbytes()), 0) << step;
      EXPECT_EQ(std::memcmp(v.view().raw(), v_ref.view().raw(), v.view().nbytes()), 0) << step;
      EXPECT_EQ(std::memcmp(g.view().raw(), g_before.view().raw(), g.view().nbytes()), 0);
    }
  }
}

TEST(AdamW, BadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  OwnedTensor p = random_tensor(DType::kF32, {kN}, 5), g = random_tensor(DType::kF32, {kN}, 6);
  OwnedTensor m = OwnedTensor::zeros(DType::kF32, {kN}), v = OwnedTensor::zeros(DType::kF32, {kN});
  ops::AdamWParams hp;
  hp.lr = 1e-3;
  hp.step = 0;
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp), ErrorKind::kInvalidArgument,
                       "step must be >= 1");
  hp.step = 1;
  hp.grad_scale = 0.0;
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp), ErrorKind::kInvalidArgument,
                       "grad_scale must be finite and > 0");
  hp.grad_scale = 1.0;
  hp.beta2 = 1.0;
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp), ErrorKind::kInvalidArgument, "beta2");
  hp.beta2 = 0.999;
  OwnedTensor short_g = random_tensor(DType::kF32, {kN - 1}, 7);
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, short_g, m, v, hp), ErrorKind::kInvalidArgument,
                       "grads");
  OwnedTensor g64 = random_tensor(DType::kF64, {kN}, 8);
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g64, m, v, hp), ErrorKind::kInvalidArgument, "fp64");
  OwnedTensor short_c = OwnedTensor::zeros(DType::kBF16, {kN - 1});
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp, short_c), ErrorKind::kInvalidArgument,
                       "compute_params");
  OwnedTensor int_c = OwnedTensor::zeros(DType::kI32, {kN});
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp, int_c), ErrorKind::kInvalidArgument,
                       "compute_params must be fp32, bf16 or fp16");
  EXPECT_SHARDLM_ERROR(ops::adamw_step(ctx, p, g, m, v, hp, p), ErrorKind::kInvalidArgument,
                       "separate buffer");
}

}  // namespace
}  // namespace shardlm
