// GPU tests of the fp8 ops (ops/cuda/fp8.cu) against the CPU backend:
//   - abs_max of fp32/bf16/fp16 inputs (planted extreme, a NaN, an unaligned view): equal bits.
//   - fp8_scale_from_amax over amaxes incl. 0, an overflowing tiny one and inf: equal bits.
//   - fp8_quantize, q / q_t / both, shapes off the 32x32 tile grid, saturating scales: equal
//     codes (the CPU quantises the fp32 copy of the rounded input).
//   - fp8_gemm for each operand-format pair into bf16/fp16/fp32, with bias and accumulation,
//     against the CPU's fp32 GEMM of the same codes and factors, twice per shape (the second call
//     runs the cached plan with other scale tensors); and its refusals.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shardlm/base/error.h"
#include "shardlm/tensor/fp8.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

constexpr DType kE4M3 = DType::kF8E4M3;
constexpr DType kE5M2 = DType::kF8E5M2;

OwnedTensor host_factor(float v) {
  OwnedTensor t = OwnedTensor::empty(DType::kF32, {1});
  t.view().data<float>()[0] = v;
  return t;
}

class Fp8GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
  }
  DeviceContext& gpu() { return *gpu_; }

  // Same-dtype byte copies either way (fp8 codes and fp32 bits; to_device converts values).
  OwnedTensor upload(const Tensor& host) {
    OwnedTensor dev = OwnedTensor::empty(host.dtype(), host.shape(), Device::cuda(0));
    ops::copy(gpu(), dev, host);
    return dev;
  }
  OwnedTensor download(const Tensor& dev) {
    OwnedTensor host = OwnedTensor::empty(dev.dtype(), dev.shape());
    ops::copy(gpu(), host, dev);
    return host;
  }

  DeviceContext cpu_ = DeviceContext::cpu();

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

// Index of the first differing byte, or -1.
int64_t first_difference(const Tensor& got, const Tensor& want) {
  const uint8_t* g = static_cast<const uint8_t*>(got.raw());
  const uint8_t* w = static_cast<const uint8_t*>(want.raw());
  for (int64_t i = 0; i < static_cast<int64_t>(want.nbytes()); ++i)
    if (g[i] != w[i]) return i;
  return -1;
}

void expect_same_bytes(const std::string& what, const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.nbytes(), want.nbytes()) << what;
  const int64_t i = first_difference(got, want);
  if (i < 0) return;
  const uint8_t* g = static_cast<const uint8_t*>(got.raw());
  const uint8_t* w = static_cast<const uint8_t*>(want.raw());
  ADD_FAILURE() << what << ": byte " << i << " is 0x" << std::hex << int(g[i]) << " on the GPU, 0x"
                << int(w[i]) << " on the CPU";
}

// ---- abs_max ------------------------------------------------------------------------------------
TEST_F(Fp8GpuTest, AbsMaxEqualsCpu) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1003}, int64_t{3'000'000}}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " n=" + std::to_string(n));
      // One element more than n: the view at element 1 is not 16-byte aligned (scalar path).
      OwnedTensor x = random_tensor(DType::kF32, {n + 1}, 50 + n);
      x.view().data<float>()[n] = -37.5f;          // the planted extreme (exact in bf16/fp16)
      if (n > 10) x.view().data<float>()[7] = NAN;  // skipped on both backends
      const OwnedTensor x_ref = round_to(x, dt);
      const OwnedTensor x_d = to_device(x, dt);
      for (int64_t offset : {int64_t{0}, int64_t{1}}) {
        const int64_t count = offset == 0 ? n + 1 : n;
        OwnedTensor want = host_factor(-1.0f);
        ops::cpu::abs_max(cpu_, want, x_ref.view().flat_view(offset, {count}));
        OwnedTensor got_d = poisoned_device(DType::kF32, {1});
        ops::abs_max(gpu(), got_d, x_d.view().flat_view(offset, {count}));
        expect_same_bytes("abs_max offset " + std::to_string(offset), download(got_d), want);
        EXPECT_EQ(want.view().data<float>()[0], 37.5f);
      }
    }
  }
}

// ---- fp8_scale_from_amax ------------------------------------------------------------------------
TEST_F(Fp8GpuTest, ScaleFromAmaxEqualsCpuBitForBit) {
  const std::vector<float> special = {0.0f,  1e-40f, INFINITY, 448.0f, 57344.0f, 3.5f,
                                      1e-30f, 3e38f,  1.0f,     2e-38f, 7.0e-3f};
  const OwnedTensor random = random_tensor(DType::kF32, {1000}, 60, 5.0);
  OwnedTensor amax = OwnedTensor::empty(DType::kF32, {static_cast<int64_t>(special.size()) + 1000});
  float* a = amax.view().data<float>();
  for (size_t i = 0; i < special.size(); ++i) a[i] = special[i];
  for (int64_t i = 0; i < 1000; ++i)
    a[special.size() + i] = std::fabs(random.view().data<float>()[i]);
  const OwnedTensor amax_d = upload(amax);
  for (DType format : {kE4M3, kE5M2}) {
    for (int margin : {0, 2, 40}) {
      SCOPED_TRACE(std::string(dtype_name(format)) + " margin=" + std::to_string(margin));
      OwnedTensor scale = OwnedTensor::empty(DType::kF32, amax.view().shape());
      OwnedTensor inv = OwnedTensor::empty(DType::kF32, amax.view().shape());
      ops::cpu::fp8_scale_from_amax(cpu_, scale, inv, amax, format, margin);
      OwnedTensor scale_d = poisoned_device(DType::kF32, amax.view().shape());
      OwnedTensor inv_d = poisoned_device(DType::kF32, amax.view().shape());
      ops::fp8_scale_from_amax(gpu(), scale_d, inv_d, amax_d, format, margin);
      expect_same_bytes("scale", download(scale_d), scale);
      expect_same_bytes("scale_inv", download(inv_d), inv);
      EXPECT_EQ(scale.view().data<float>()[1], FLT_MAX);  // the tiny amax overflows
    }
  }
}

// ---- fp8_quantize -------------------------------------------------------------------------------
TEST_F(Fp8GpuTest, QuantizeCodesEqualCpu) {
  // The last dimension is C, the rest flatten to N.
  const std::vector<Shape> shapes = {{67, 129}, {1, 8}, {512, 768}, {4099, 64}, {33, 1},
                                     {2, 33, 40}};
  for (const Shape& shape : shapes) {
    const int64_t C = shape[shape.rank() - 1], N = shape.numel() / C;
    const OwnedTensor x = random_tensor(DType::kF32, shape, 70 + N + C, 2.0);
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
      const OwnedTensor x_ref = round_to(x, dt);
      const OwnedTensor x_d = to_device(x, dt);
      for (DType format : {kE4M3, kE5M2}) {
        SCOPED_TRACE(shape.to_string() + " " + dtype_name(dt) + " -> " + dtype_name(format));
        // |x| reaches ~8 (stddev 2): a quarter of the largest code saturates the tails, and the
        // smallest |x| give fp8 subnormals.
        const OwnedTensor scale = host_factor(static_cast<float>(fp8_max(format) / 4.0));
        const OwnedTensor scale_d = upload(scale);
        OwnedTensor q = OwnedTensor::empty(format, {N, C});
        OwnedTensor q_t = OwnedTensor::empty(format, {C, N});
        ops::cpu::fp8_quantize(cpu_, q, q_t, x_ref, scale);
        const uint8_t max_code = format == kE4M3 ? 0x7E : 0x7B;  // the largest finite value
        if (N * C > 1000) {
          int saturated = 0;
          for (int64_t i = 0; i < N * C; ++i)
            saturated += (static_cast<const uint8_t*>(q.view().raw())[i] & 0x7F) == max_code;
          EXPECT_GT(saturated, 0) << "no saturating element: the test lost its point";
        }
        for (int mode = 0; mode < 3; ++mode) {  // q and q_t, q only, q_t only
          const bool with_q = mode != 2, with_q_t = mode != 1;
          OwnedTensor q_d = poisoned_device(format, {N, C});
          OwnedTensor q_t_d = poisoned_device(format, {C, N});
          ops::fp8_quantize(gpu(), with_q ? q_d.view() : Tensor(),
                            with_q_t ? q_t_d.view() : Tensor(), x_d, scale_d);
          if (with_q) expect_same_bytes("q (mode " + std::to_string(mode) + ")", download(q_d), q);
          if (with_q_t)
            expect_same_bytes("q_t (mode " + std::to_string(mode) + ")", download(q_t_d), q_t);
        }
      }
    }
  }
}

// ---- fp8_gemm -----------------------------------------------------------------------------------
// One operand as the model makes it: amax -> scale -> codes, all on the CPU.
struct Quantized {
  OwnedTensor codes;      // host fp8
  OwnedTensor scale_inv;  // host fp32 [1]
};
Quantized quantize_on_cpu(DeviceContext& cpu, const Tensor& x, DType format) {
  OwnedTensor amax = host_factor(0.0f), scale = host_factor(0.0f), inv = host_factor(0.0f);
  ops::cpu::abs_max(cpu, amax, x);
  ops::cpu::fp8_scale_from_amax(cpu, scale, inv, amax, format, /*margin=*/0);
  OwnedTensor codes = OwnedTensor::empty(format, x.shape());
  ops::cpu::fp8_quantize(cpu, codes, Tensor(), x, scale);
  return {std::move(codes), std::move(inv)};
}

struct GemmShape {
  int64_t M, N, K;
};
struct GemmVariant {
  DType a, b, out;
  bool bias, accumulate;
};

TEST_F(Fp8GpuTest, GemmMatchesCpu) {
  const std::vector<GemmVariant> variants = {
      {kE4M3, kE4M3, DType::kBF16, false, false}, {kE4M3, kE4M3, DType::kBF16, true, false},
      {kE5M2, kE4M3, DType::kBF16, false, false}, {kE4M3, kE5M2, DType::kBF16, true, false},
      {kE4M3, kE5M2, DType::kF32, false, true},   {kE4M3, kE4M3, DType::kF32, false, false},
      {kE4M3, kE4M3, DType::kF16, true, false},   {kE5M2, kE4M3, DType::kBF16, true, true}};
  for (const GemmShape& s : {GemmShape{64, 48, 32}, GemmShape{512, 768, 256},
                             GemmShape{4096, 1024, 2048}}) {
    const OwnedTensor a = random_tensor(DType::kF32, {s.M, s.K}, 81);
    const OwnedTensor b = random_tensor(DType::kF32, {s.N, s.K}, 82, 0.05);
    const OwnedTensor bias = random_tensor(DType::kF32, {s.N}, 83);
    const OwnedTensor start = random_tensor(DType::kF32, {s.M, s.N}, 84);
    for (const GemmVariant& v : variants) {
      SCOPED_TRACE("M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) +
                   " K=" + std::to_string(s.K) + " " + dtype_name(v.a) + " x " + dtype_name(v.b) +
                   " -> " + dtype_name(v.out) + (v.bias ? " +bias" : "") +
                   (v.accumulate ? " +=" : ""));
      const Quantized qa = quantize_on_cpu(cpu_, a, v.a), qb = quantize_on_cpu(cpu_, b, v.b);
      const OwnedTensor a_d = upload(qa.codes), b_d = upload(qb.codes);
      const OwnedTensor bias_ref = round_to(bias, v.out), start_ref = round_to(start, v.out);
      const OwnedTensor bias_d = to_device(bias, v.out);
      // Twice: the second call runs the cached plan with new scale tensors (other pointers,
      // other values), so a stale scale pointer on the plan would show.
      for (float factor : {1.0f, 2.5f}) {
        const OwnedTensor a_inv = host_factor(qa.scale_inv.view().data<float>()[0] * factor);
        const OwnedTensor b_inv = host_factor(qb.scale_inv.view().data<float>()[0] / 2.0f);
        OwnedTensor want = testing::clone(start_ref);
        ops::cpu::fp8_gemm(cpu_, want, qa.codes, a_inv, qb.codes, b_inv,
                           v.bias ? bias_ref.view() : Tensor(), v.accumulate);
        OwnedTensor out_d =
            v.accumulate ? to_device(start, v.out) : poisoned_device(v.out, {s.M, s.N});
        // Named: the factors must outlive the asynchronous GEMM.
        const OwnedTensor a_inv_d = upload(a_inv), b_inv_d = upload(b_inv);
        ops::fp8_gemm(gpu(), out_d, a_d, a_inv_d, b_d, b_inv_d, v.bias ? bias_d.view() : Tensor(),
                      v.accumulate);
        // fp32 out: Hopper's fp8 MMA accumulates in reduced precision (measured on H100 up to
        // 1.3e-4 relative against the CPU's double sums at K = 256..2048; fp32's 2e-5 does not
        // hold), so 25x fp32's tolerance; 16-bit outs are within their own rounding.
        expect_matches_reference("fp8_gemm (call " + std::string(factor == 1.0f ? "1" : "2") + ")",
                                 gpu(), out_d, want, v.out, v.out == DType::kF32 ? 25.0 : 1.0);
      }
    }
  }
}

TEST_F(Fp8GpuTest, GemmKZeroFollowsCpu) {
  const int64_t M = 32, N = 16;
  const OwnedTensor bias = random_tensor(DType::kF32, {N}, 91);
  const OwnedTensor start = random_tensor(DType::kF32, {M, N}, 92);
  const OwnedTensor a = OwnedTensor::empty(kE4M3, {M, 0}), b = OwnedTensor::empty(kE4M3, {N, 0});
  const OwnedTensor one = host_factor(1.0f);
  const OwnedTensor a_d = upload(a), b_d = upload(b), one_d = upload(one);
  const OwnedTensor bias_ref = round_to(bias, DType::kBF16), bias_d = to_device(bias, DType::kBF16);
  for (bool accumulate : {false, true}) {
    OwnedTensor want = round_to(start, DType::kBF16);
    ops::cpu::fp8_gemm(cpu_, want, a, one, b, one, bias_ref, accumulate);
    OwnedTensor out_d = to_device(start, DType::kBF16);
    ops::fp8_gemm(gpu(), out_d, a_d, one_d, b_d, one_d, bias_d, accumulate);
    expect_matches_reference(accumulate ? "K=0, +=" : "K=0", gpu(), out_d, want, DType::kBF16);
  }
}

TEST_F(Fp8GpuTest, GemmRefusalsAreNamed) {
  const auto codes = [&](DType format, int64_t rows, int64_t cols) {
    const OwnedTensor x = random_tensor(DType::kF32, {rows, cols}, 95);
    return upload(quantize_on_cpu(cpu_, x, format).codes);
  };
  const OwnedTensor one = upload(host_factor(1.0f));
  const OwnedTensor a20 = codes(kE4M3, 20, 32), b = codes(kE4M3, 48, 32);
  OwnedTensor out = poisoned_device(DType::kBF16, {20, 48});
  constexpr ErrorKind kBad = ErrorKind::kInvalidArgument;
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(gpu(), out, a20, one, b, one, Tensor(), false), kBad,
                       "M=20 N=48 K=32 must all be multiples of 16");

  const OwnedTensor a5 = codes(kE5M2, 32, 32), b5 = codes(kE5M2, 48, 32);
  OwnedTensor out32 = poisoned_device(DType::kBF16, {32, 48});
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(gpu(), out32, a5, one, b5, one, Tensor(), false), kBad,
                       "both fp8_e5m2");

  const OwnedTensor a = codes(kE4M3, 32, 32);
  OwnedTensor out_f32 = poisoned_device(DType::kF32, {32, 48});
  const OwnedTensor bias_f32 = to_device(random_tensor(DType::kF32, {48}, 96), DType::kF32);
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(gpu(), out_f32, a, one, b, one, bias_f32, false), kBad,
                       "bias");

  // A scale factor off a 16-byte boundary (cuBLASLt refused such a launch on H100).
  const OwnedTensor pair = to_device(random_tensor(DType::kF32, {2}, 97), DType::kF32);
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(gpu(), out32, a, pair.view().slice(1, 2), b, one, Tensor(),
                                     false),
                       kBad, "16-byte aligned scale");

  OwnedTensor out_f64 = OwnedTensor::empty(DType::kF64, {32, 48}, Device::cuda(0));
  EXPECT_SHARDLM_ERROR(ops::fp8_gemm(gpu(), out_f64, a, one, b, one, Tensor(), false), kBad,
                       "fp64");
}

}  // namespace
}  // namespace shardlm
