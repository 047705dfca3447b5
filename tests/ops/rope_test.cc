// Tests of rope_cos_sin / rope_forward / rope_backward on the CPU: the table against the
// Hugging Face / Megatron inv_freq formula, forward against two independent fp64 references
// (Hugging Face's q*cos + rotate_half(q)*sin for the default layout, complex multiplication for
// the interleaved one), hand-computed numbers, partial rotation (--rotary-percent), relative
// position property, finite-difference backward, in place == out of place, fp32 vs fp64,
// Llama 3 / linear rescaled tables against Hugging Face's formula, and argument validation.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <vector>

#include "shardlm/ops/ops.h"
#include "tests/testing/op_checks.h"
#include "tests/testing/tensors.h"

namespace shardlm {
namespace {

using testing::clone;
using testing::dot;
using testing::from_vector;
using testing::random_tensor;
using testing::rel_error;
using testing::to_vector;

struct Case {
  int64_t B, T, NH, G, HS, R;
  bool interleaved;
};

int64_t qkv_width(const Case& c) { return c.G * (c.NH / c.G + 2) * c.HS; }
ops::AttentionShape shape_of(const Case& c) { return {c.NH, c.G, c.HS}; }

OwnedTensor make_table(DeviceContext& ctx, DType dtype, int64_t P, int64_t R, double base) {
  OwnedTensor table = OwnedTensor::empty(dtype, {P, R / 2, 2});
  ops::rope_cos_sin(ctx, table, {.base = base});
  return table;
}

// Hugging Face's LlamaRotaryEmbedding, written out: inv_freq = 1 / base^(arange(0, R, 2) / R),
// freqs = t * inv_freq, emb = cat(freqs, freqs) (interleaved: each frequency twice in a row).
std::vector<double> hf_angles(int64_t t, int64_t R, double base, bool interleaved) {
  std::vector<double> freqs;
  for (int64_t j = 0; j < R; j += 2)
    freqs.push_back(static_cast<double>(t) / std::pow(base, static_cast<double>(j) / R));
  std::vector<double> emb;
  if (interleaved) {
    for (double f : freqs) emb.insert(emb.end(), {f, f});
  } else {
    emb = freqs;
    emb.insert(emb.end(), freqs.begin(), freqs.end());
  }
  return emb;
}

// One head x[HS] at position t, rotated on its first R dims.
std::vector<double> reference_head(const std::vector<double>& x, int64_t t, int64_t R,
                                   double base, bool interleaved) {
  std::vector<double> y = x;
  if (!interleaved) {
    // q_embed = q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1).
    const std::vector<double> emb = hf_angles(t, R, base, false);
    for (int64_t d = 0; d < R; ++d) {
      const double rotated = d < R / 2 ? -x[d + R / 2] : x[d - R / 2];
      y[d] = x[d] * std::cos(emb[d]) + rotated * std::sin(emb[d]);
    }
  } else {
    // (x[2i] + i x[2i+1]) * exp(i θ_i), the original RoFormer / GPT-J formulation.
    for (int64_t i = 0; i < R / 2; ++i) {
      const double theta = static_cast<double>(t) * std::pow(base, -2.0 * i / R);
      const std::complex<double> z = std::complex<double>(x[2 * i], x[2 * i + 1]) *
                                     std::polar(1.0, theta);
      y[2 * i] = z.real();
      y[2 * i + 1] = z.imag();
    }
  }
  return y;
}

// Whole fused-QKV reference: view the row as [G][NH/G q heads | k | v][HS].
std::vector<double> reference(const Tensor& qkv, const Case& c, double base) {
  const std::vector<double> x = to_vector(qkv);
  std::vector<double> y = x;
  const int64_t width = qkv_width(c), per_group = c.NH / c.G + 2;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t g = 0; g < c.G; ++g)
        for (int64_t slot = 0; slot < per_group - 1; ++slot) {  // not the v head
          const int64_t off = (b * c.T + t) * width + (g * per_group + slot) * c.HS;
          const std::vector<double> head(x.begin() + off, x.begin() + off + c.HS);
          const std::vector<double> r = reference_head(head, t, c.R, base, c.interleaved);
          std::copy(r.begin(), r.end(), y.begin() + off);
        }
  return y;
}

class RopeCases : public ::testing::TestWithParam<Case> {};

TEST_P(RopeCases, ForwardMatchesIndependentReference) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c = GetParam();
  const double base = 10000.0;
  OwnedTensor table = make_table(ctx, DType::kF64, c.T + 3, c.R, base);
  OwnedTensor in = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 1);
  OwnedTensor out = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 2);  // overwritten
  ops::rope_forward(ctx, out, in, table, shape_of(c), c.interleaved);
  EXPECT_LT(rel_error(to_vector(out), reference(in, c, base)), 1e-14);
}

TEST_P(RopeCases, InPlaceEqualsOutOfPlace) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c = GetParam();
  OwnedTensor table = make_table(ctx, DType::kF64, c.T, c.R, 500.0);
  OwnedTensor in = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 3);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, in.view().shape());
  ops::rope_forward(ctx, out, in, table, shape_of(c), c.interleaved);
  OwnedTensor x = clone(in);
  ops::rope_forward(ctx, x, x, table, shape_of(c), c.interleaved);
  EXPECT_EQ(to_vector(x), to_vector(out));
  OwnedTensor dx = clone(in), din = OwnedTensor::zeros(DType::kF64, in.view().shape());
  ops::rope_backward(ctx, din, in, table, shape_of(c), c.interleaved);
  ops::rope_backward(ctx, dx, dx, table, shape_of(c), c.interleaved);
  EXPECT_EQ(to_vector(dx), to_vector(din));
}

TEST_P(RopeCases, BackwardMatchesFiniteDifferences) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c = GetParam();
  OwnedTensor table = make_table(ctx, DType::kF64, c.T, c.R, 10000.0);
  OwnedTensor in = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 4);
  OwnedTensor dout = random_tensor(DType::kF64, in.view().shape(), 5);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, in.view().shape());
  auto loss = [&] {
    ops::rope_forward(ctx, out, in, table, shape_of(c), c.interleaved);
    return dot(out, dout);
  };
  OwnedTensor din = random_tensor(DType::kF64, in.view().shape(), 6, 1e3);  // must be assigned
  ops::rope_backward(ctx, din, dout, table, shape_of(c), c.interleaved);
  testing::expect_gradient("din", in.view(), loss, din, 1e-8);
}

TEST_P(RopeCases, BackwardInvertsForward) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c = GetParam();
  OwnedTensor table = make_table(ctx, DType::kF64, c.T, c.R, 10000.0);
  OwnedTensor in = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 7);
  OwnedTensor x = clone(in);
  ops::rope_forward(ctx, x, x, table, shape_of(c), c.interleaved);
  EXPECT_GT(rel_error(to_vector(x), to_vector(in)), 1e-3);  // T > 1: something rotated
  ops::rope_backward(ctx, x, x, table, shape_of(c), c.interleaved);
  EXPECT_LT(rel_error(to_vector(x), to_vector(in)), 1e-14);
}

TEST_P(RopeCases, Fp32MatchesFp64) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c = GetParam();
  OwnedTensor table64 = make_table(ctx, DType::kF64, c.T, c.R, 10000.0);
  OwnedTensor table32 = make_table(ctx, DType::kF32, c.T, c.R, 10000.0);
  OwnedTensor in64 = random_tensor(DType::kF64, {c.B, c.T, qkv_width(c)}, 8);
  OwnedTensor in32 = testing::convert(in64, DType::kF32);
  OwnedTensor out64 = OwnedTensor::zeros(DType::kF64, in64.view().shape());
  OwnedTensor out32 = OwnedTensor::zeros(DType::kF32, in64.view().shape());
  ops::rope_forward(ctx, out64, in64, table64, shape_of(c), c.interleaved);
  ops::rope_forward(ctx, out32, in32, table32, shape_of(c), c.interleaved);
  EXPECT_LT(rel_error(to_vector(out32), to_vector(out64)), 1e-6);
  // fp32 activations with an fp64 table (the table dtype is independent of the activations).
  ops::rope_forward(ctx, out32, in32, table64, shape_of(c), c.interleaved);
  EXPECT_LT(rel_error(to_vector(out32), to_vector(out64)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, RopeCases,
    ::testing::Values(Case{2, 5, 4, 2, 8, 8, false},   // GQA, full rotation, rotate-half
                      Case{2, 5, 4, 2, 8, 8, true},    // interleaved
                      Case{1, 7, 6, 6, 6, 6, false},   // MHA, HS not a power of two
                      Case{3, 4, 4, 1, 8, 4, false},   // MQA, rotary_percent 0.5
                      Case{3, 4, 4, 1, 8, 4, true},    // MQA, interleaved, rotary_percent 0.5
                      Case{1, 9, 2, 2, 10, 2, false}), // only one pair rotated
    [](const ::testing::TestParamInfo<Case>& info) {
      const Case& c = info.param;
      return "NH" + std::to_string(c.NH) + "G" + std::to_string(c.G) + "HS" +
             std::to_string(c.HS) + "R" + std::to_string(c.R) +
             (c.interleaved ? "Interleaved" : "RotateHalf");
    });

TEST(Rope, TableMatchesInvFreqFormula) {
  DeviceContext ctx = DeviceContext::cpu();
  const int64_t P = 11, R = 12;
  const double base = 500000.0;  // Llama 3's rope_theta
  OwnedTensor table = make_table(ctx, DType::kF64, P, R, base);
  const std::vector<double> v = to_vector(table);
  for (int64_t t = 0; t < P; ++t) {
    const std::vector<double> emb = hf_angles(t, R, base, false);
    for (int64_t i = 0; i < R / 2; ++i) {
      EXPECT_NEAR(v[(t * R / 2 + i) * 2], std::cos(emb[i]), 1e-15) << "t=" << t << " i=" << i;
      EXPECT_NEAR(v[(t * R / 2 + i) * 2 + 1], std::sin(emb[i]), 1e-15) << "t=" << t << " i=" << i;
    }
  }
  OwnedTensor table32 = make_table(ctx, DType::kF32, P, R, base);
  EXPECT_LT(rel_error(to_vector(table32), v), 1e-7);
}

// One head of HS = R = 4, base 10000 (inv_freq = [1, 0.01]), q = [1, 2, 3, 4]; numbers from
// Hugging Face's apply_rotary_pos_emb formula (and the interleaved pairing) evaluated by hand
// in Python doubles.
TEST(Rope, HandComputedHuggingFaceNumbers) {
  DeviceContext ctx = DeviceContext::cpu();
  const Case c{1, 4, 1, 1, 4, 4, false};
  OwnedTensor table = make_table(ctx, DType::kF64, 4, 4, 10000.0);
  // Row t: [q | k | v], each [1, 2, 3, 4].
  std::vector<double> x;
  for (int t = 0; t < 4; ++t)
    for (int h = 0; h < 3; ++h) x.insert(x.end(), {1, 2, 3, 4});
  OwnedTensor in = from_vector(DType::kF64, {1, 4, 12}, x);
  OwnedTensor out = OwnedTensor::zeros(DType::kF64, {1, 4, 12});
  ops::rope_forward(ctx, out, in, table, shape_of(c), /*interleaved=*/false);
  std::vector<double> y = to_vector(out);
  const std::vector<double> t1 = {-1.9841106485555495, 1.959900667496664, 2.4623779024123156,
                                  4.019799668334994};
  for (int d = 0; d < 4; ++d) {
    EXPECT_DOUBLE_EQ(y[d], x[d]) << "t = 0 is the identity";
    EXPECT_NEAR(y[12 + d], t1[d], 1e-15) << "q at t=1, dim " << d;
    EXPECT_NEAR(y[12 + 4 + d], t1[d], 1e-15) << "k at t=1, dim " << d;
    EXPECT_DOUBLE_EQ(y[12 + 8 + d], x[d]) << "v is not rotated";
  }
  ops::rope_forward(ctx, out, in, table, shape_of(c), /*interleaved=*/true);
  y = to_vector(out);
  const std::vector<double> t3 = {-1.27223251272018, -1.8388649851410237, 2.87866810043698,
                                  4.088186635603437};
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(y[36 + d], t3[d], 1e-14) << "interleaved t=3 dim " << d;
}

// RoPE's defining property: <R_t q, R_s k> depends only on t - s.
TEST(Rope, ScoresDependOnlyOnRelativePosition) {
  DeviceContext ctx = DeviceContext::cpu();
  for (bool interleaved : {false, true}) {
    const Case c{1, 8, 1, 1, 8, 8, interleaved};
    OwnedTensor table = make_table(ctx, DType::kF64, 8, 8, 100.0);
    // Same q and k at every position.
    OwnedTensor one = random_tensor(DType::kF64, {1, 1, 24}, 9);
    std::vector<double> row = to_vector(one), x;
    for (int t = 0; t < 8; ++t) x.insert(x.end(), row.begin(), row.end());
    OwnedTensor in = from_vector(DType::kF64, {1, 8, 24}, x);
    ops::rope_forward(ctx, in, in, table, shape_of(c), interleaved);
    const std::vector<double> y = to_vector(in);
    auto score = [&](int t, int s) {
      double acc = 0;
      for (int d = 0; d < 8; ++d) acc += y[t * 24 + d] * y[s * 24 + 8 + d];
      return acc;
    };
    EXPECT_NEAR(score(5, 2), score(3, 0), 1e-12);
    EXPECT_NEAR(score(7, 3), score(4, 0), 1e-12);
    EXPECT_GT(std::abs(score(5, 2) - score(5, 0)), 1e-6);  // and it does depend on t - s
  }
}

TEST(Rope, RejectsBadArguments) {
  DeviceContext ctx = DeviceContext::cpu();
  const ops::AttentionShape s{4, 2, 8};
  OwnedTensor in = random_tensor(DType::kF32, {2, 5, 2 * 4 * 8}, 1);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, {2, 5, 64});
  OwnedTensor table = make_table(ctx, DType::kF32, 5, 8, 10000.0);
  OwnedTensor bad_dtype = OwnedTensor::zeros(DType::kBF16, {5, 4, 2});
  EXPECT_SHARDLM_ERROR(ops::rope_forward(ctx, out, in, bad_dtype, s, false),
                       ErrorKind::kInvalidArgument, "cos_sin must be fp32 or fp64");
  OwnedTensor too_wide = make_table(ctx, DType::kF32, 5, 10, 10000.0);
  EXPECT_SHARDLM_ERROR(ops::rope_forward(ctx, out, in, too_wide, s, false),
                       ErrorKind::kInvalidArgument, "exceeds head_dim");
  OwnedTensor too_short = make_table(ctx, DType::kF32, 4, 8, 10000.0);
  EXPECT_SHARDLM_ERROR(ops::rope_backward(ctx, out, in, too_short, s, false),
                       ErrorKind::kInvalidArgument, "positions");
  EXPECT_SHARDLM_ERROR(ops::rope_forward(ctx, out, in, table, {4, 4, 4}, false),
                       ErrorKind::kInvalidArgument, "G*(NH/G + 2)*HS");
  OwnedTensor big = random_tensor(DType::kF32, {2 * 5 * 64 + 1}, 2);
  EXPECT_SHARDLM_ERROR(
      ops::rope_forward(ctx, big.view().flat_view(1, {2, 5, 64}), big.view().flat_view(0, {2, 5, 64}),
                        table, s, false),
      ErrorKind::kInvalidArgument, "partially overlaps");
  EXPECT_SHARDLM_ERROR(ops::rope_cos_sin(ctx, table, {.base = 0.0}), ErrorKind::kInvalidArgument,
                       "--rotary-base");
  OwnedTensor odd = OwnedTensor::zeros(DType::kF32, {5, 4, 3});
  EXPECT_SHARDLM_ERROR(ops::rope_cos_sin(ctx, odd, {}), ErrorKind::kInvalidArgument,
                       "[P, R/2, 2]");
}

// Hugging Face's _compute_llama3_parameters, written out on the whole inv_freq vector (its
// torch.where form), then linear interpolation as a division of the positions.
std::vector<double> hf_scaled_inv_freq(int64_t R, const ops::RopeFrequencies& f) {
  std::vector<double> inv, out;
  for (int64_t j = 0; j < R; j += 2) inv.push_back(1.0 / std::pow(f.base, double(j) / R));
  for (double v : inv) {
    double x = v;
    if (f.llama3_scaling) {
      const double low_wavelen = f.original_max_positions / f.low_freq_factor;
      const double high_wavelen = f.original_max_positions / f.high_freq_factor;
      const double wavelen = 2 * M_PI / v;
      const double llama = wavelen > low_wavelen ? v / f.scaling_factor : v;
      const double smooth = (f.original_max_positions / wavelen - f.low_freq_factor) /
                            (f.high_freq_factor - f.low_freq_factor);
      const double smoothed = (1 - smooth) * llama / f.scaling_factor + smooth * llama;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      x = medium ? smoothed : llama;
    }
    out.push_back(x);
  }
  return out;
}

// Llama 3's rescaling (and linear interpolation) against the formula above, at parameters that
// put pairs in all three bands: R = 16, base 5e5 gives wavelengths 6.3 (high: kept), 32.4
// (medium: blended) and >= 167 (low: divided by the factor) for original context 64 and
// frequency factors 1 and 4.
TEST(Rope, ScaledTablesMatchTheLlama3AndLinearFormulas) {
  DeviceContext ctx(Device::cpu());
  const int64_t P = 40, R = 16;
  ops::RopeFrequencies llama3{.base = 5e5, .llama3_scaling = true, .scaling_factor = 4.0,
                              .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                              .original_max_positions = 64};
  ops::RopeFrequencies linear{.base = 5e5, .interpolation_factor = 2.5};
  ops::RopeFrequencies both = llama3;
  both.interpolation_factor = 2.5;
  const ops::RopeFrequencies plain{.base = 5e5};
  OwnedTensor unscaled = OwnedTensor::empty(DType::kF64, {P, R / 2, 2});
  ops::rope_cos_sin(ctx, unscaled, plain);
  const std::vector<double> u = to_vector(unscaled);
  for (const auto& [what, f] : {std::pair{"llama3", llama3}, std::pair{"linear", linear},
                                std::pair{"llama3 + linear", both}}) {
    SCOPED_TRACE(what);
    OwnedTensor table = OwnedTensor::empty(DType::kF64, {P, R / 2, 2});
    ops::rope_cos_sin(ctx, table, f);
    const std::vector<double> got = to_vector(table);
    const std::vector<double> inv = hf_scaled_inv_freq(R, f);
    for (int64_t t = 0; t < P; ++t)
      for (int64_t i = 0; i < R / 2; ++i) {
        const double theta = (double(t) / f.interpolation_factor) * inv[i];
        const size_t k = static_cast<size_t>((t * R / 2 + i) * 2);
        EXPECT_NEAR(got[k], std::cos(theta), 1e-12) << "t=" << t << " i=" << i;
        EXPECT_NEAR(got[k + 1], std::sin(theta), 1e-12) << "t=" << t << " i=" << i;
      }
    // The bands: pair 0 (high frequency) keeps its angle under llama3 alone; the last pair (low)
    // turns factor times slower; pair 1 (medium) lies strictly between.
    const int64_t t = 30;
    const double angle0 = std::atan2(got[(t * R / 2) * 2 + 1], got[(t * R / 2) * 2]);
    const double plain0 = std::atan2(u[(t * R / 2) * 2 + 1], u[(t * R / 2) * 2]);
    if (f.interpolation_factor == 1.0) EXPECT_NEAR(angle0, plain0, 1e-12);
    const double plain_last = t * std::pow(5e5, -2.0 * (R / 2 - 1) / R);
    const double got_last = std::atan2(got[(t * R / 2 + R / 2 - 1) * 2 + 1],
                                       got[(t * R / 2 + R / 2 - 1) * 2]);
    const double divisor = (f.llama3_scaling ? 4.0 : 1.0) * f.interpolation_factor;
    EXPECT_NEAR(got_last, plain_last / divisor, 1e-12);
    if (f.llama3_scaling && f.interpolation_factor == 1.0) {  // at t = 1: no wrap past π
      const double plain1 = std::pow(5e5, -2.0 / R);
      const double got1 = std::atan2(got[(R / 2 + 1) * 2 + 1], got[(R / 2 + 1) * 2]);
      EXPECT_GT(got1, plain1 / 4.0 + 1e-3);
      EXPECT_LT(got1, plain1 - 1e-3);
    }
  }
  // Without scaling the table is the formula the op computed before scaling existed, bit for
  // bit (cos / sin of t · base^(-2i/R) in double), and unused scaling parameters change nothing.
  for (int64_t t = 0; t < P; ++t)
    for (int64_t i = 0; i < R / 2; ++i) {
      const double theta = static_cast<double>(t) * std::pow(5e5, -2.0 * static_cast<double>(i) /
                                                                     static_cast<double>(R));
      const size_t k = static_cast<size_t>((t * R / 2 + i) * 2);
      ASSERT_EQ(u[k], std::cos(theta)) << "t=" << t << " i=" << i;
      ASSERT_EQ(u[k + 1], std::sin(theta)) << "t=" << t << " i=" << i;
    }
  OwnedTensor again = OwnedTensor::empty(DType::kF64, {P, R / 2, 2});
  ops::rope_cos_sin(ctx, again, ops::RopeFrequencies{.base = 5e5, .scaling_factor = 32.0});
  EXPECT_EQ(to_vector(again), u);
}

TEST(Rope, ScalingParametersAreValidated) {
  DeviceContext ctx(Device::cpu());
  OwnedTensor table = OwnedTensor::empty(DType::kF32, {8, 4, 2});
  const ops::RopeFrequencies llama3{.llama3_scaling = true};
  auto with = [&](auto change) {
    ops::RopeFrequencies f = llama3;
    change(f);
    return f;
  };
  EXPECT_SHARDLM_ERROR(
      ops::rope_cos_sin(ctx, table, with([](auto& f) { f.high_freq_factor = 1.0; })),
      ErrorKind::kInvalidArgument, "--rope-scaling-high-freq-factor");
  EXPECT_SHARDLM_ERROR(
      ops::rope_cos_sin(ctx, table, with([](auto& f) { f.scaling_factor = 0.0; })),
      ErrorKind::kInvalidArgument, "--rope-scaling-factor");
  EXPECT_SHARDLM_ERROR(
      ops::rope_cos_sin(ctx, table, with([](auto& f) { f.original_max_positions = -1; })),
      ErrorKind::kInvalidArgument, "--rope-scaling-original-max-position-embeddings");
  EXPECT_SHARDLM_ERROR(ops::rope_cos_sin(ctx, table, {.interpolation_factor = 0.0}),
                       ErrorKind::kInvalidArgument, "--rotary-seq-len-interpolation-factor");
  // Unused llama3 parameters are not checked without --use-rope-scaling.
  ops::rope_cos_sin(ctx, table, {.high_freq_factor = 0.5});
}

}  // namespace
}  // namespace shardlm
