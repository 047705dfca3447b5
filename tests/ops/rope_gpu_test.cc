// GPU tests of RoPE: the fp32 cos/sin table against the CPU's, and rope_forward / rope_backward
// on random inputs (out of place into poisoned outputs, and in place), for both pair layouts,
// partial rotation, GQA/MQA/MHA and sizes that are not tile multiples. Each result is checked
// twice: against the CPU reference (double math) within the dtype's tolerance, and bit for bit
// against a host model of the kernel's fp32 arithmetic, so every kernel path (16-byte vectors or
// scalars, either layout, copies out of place) must give exactly the same values.
#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

struct RopeGpuCase {
  int64_t B, T, NH, G, HS, R;
  bool interleaved;
  std::string name() const {
    return "B" + std::to_string(B) + " T" + std::to_string(T) + " NH" + std::to_string(NH) +
           " G" + std::to_string(G) + " HS" + std::to_string(HS) + " R" + std::to_string(R) +
           (interleaved ? " interleaved" : " rotate-half");
  }
  Shape shape() const { return {B, T, G * (NH / G + 2) * HS}; }
  ops::AttentionShape attention() const { return {NH, G, HS}; }
};

// rope.cu's arithmetic on the host: per pair, in fp32, s = sign * sin,
// a' = fma(a, cos, -(b * s)), b' = fma(a, s, b * cos), then one rounding to dt. Every step is a
// correctly rounded IEEE operation on both sides (the build has no fast-math or flush-to-zero),
// so the device must match it exactly. in: fp32 host values already rounded to dt; table: the
// device's table copied back (the kernel reads that one, not the CPU's).
OwnedTensor rope_kernel_model(const Tensor& in, const Tensor& table, const RopeGpuCase& c,
                              float sign, DType dt) {
  OwnedTensor out = OwnedTensor::empty(DType::kF32, in.shape());
  const float* x = in.data<float>();
  const float* cs = table.data<float>();
  float* y = out.view().data<float>();
  const int64_t half = c.R / 2, slots = c.NH / c.G + 1, group = (slots + 1) * c.HS;
  const int64_t row = c.G * group;
  for (int64_t e = 0; e < in.numel(); ++e) y[e] = x[e];  // v heads, dims >= R
  for (int64_t n = 0; n < c.B * c.T; ++n) {
    const float* tab = cs + (n % c.T) * half * 2;
    for (int64_t g = 0; g < c.G; ++g)
      for (int64_t slot = 0; slot < slots; ++slot)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t head = n * row + g * group + slot * c.HS;
          const int64_t ia = head + (c.interleaved ? 2 * i : i);
          const int64_t ib = head + (c.interleaved ? 2 * i + 1 : i + half);
          const float co = tab[2 * i], s = sign * tab[2 * i + 1];
          const float a = x[ia], b = x[ib];
          const float bs = b * s, bc = b * co;
          y[ia] = std::fma(a, co, -bs);
          y[ib] = std::fma(a, s, bc);
        }
  }
  return round_to(out, dt);
}

// Every element of `device` equals `model` (NaN, e.g. an unwritten poisoned element, never does).
void expect_same_values(const std::string& what, const DeviceContext& ctx, const Tensor& device,
                        const Tensor& model) {
  const OwnedTensor host = to_host(ctx, device);
  const std::vector<double> got = to_vector(host), want = to_vector(model);
  ASSERT_EQ(got.size(), want.size());
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == want[i])) {
      if (bad++ == 0) first << " first at [" << i << "]: gpu " << got[i] << " vs model " << want[i];
    }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size()
                    << " elements differ from the host model of the kernel." << first.str();
}

class RopeGpuTest : public GpuOpTest {
 protected:
  // Runs forward and backward of case c, out of place into poisoned outputs and in place, on
  // device views that start in_offset / out_offset elements (table_offset floats for the
  // table) into their buffers, checking each result against the CPU reference and exactly
  // against the kernel model.
  void check_case(const RopeGpuCase& c, int64_t in_offset = 0, int64_t out_offset = 0,
                  int64_t table_offset = 0) {
    const DType dt = dtype();
    const Shape shape = c.shape();
    const ops::AttentionShape as = c.attention();
    const Shape table_shape{c.T + 2, c.R / 2, 2};  // P > T: the kernel must index by n % T
    OwnedTensor table = OwnedTensor::empty(DType::kF32, table_shape);
    ops::cpu::rope_cos_sin(cpu_, table, {});
    // Device table at table_offset floats into a buffer (2: 8-byte but not 16-byte aligned).
    OwnedTensor table_buf =
        poisoned_device(DType::kF32, {table_shape.numel() + table_offset});
    const Tensor table_d = table_buf.view().flat_view(table_offset, table_shape);
    ops::rope_cos_sin(gpu(), table_d, {});
    const OwnedTensor table_h = to_host(gpu(), table_d);

    const OwnedTensor in = round_to(random_tensor(DType::kF32, shape, 51, 2.0), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, shape, 52), dt);
    OwnedTensor out = OwnedTensor::empty(DType::kF32, shape);
    OwnedTensor din = OwnedTensor::empty(DType::kF32, shape);
    ops::cpu::rope_forward(cpu_, out, in, table, as, c.interleaved);
    ops::cpu::rope_backward(cpu_, din, dout, table, as, c.interleaved);
    const OwnedTensor out_model = rope_kernel_model(in, table_h, c, 1.0f, dt);
    const OwnedTensor din_model = rope_kernel_model(dout, table_h, c, -1.0f, dt);

    // A device copy of x placed `offset` elements into a buffer that starts with NaNs.
    const auto placed = [&](const Tensor& x, int64_t offset, OwnedTensor& buf) {
      OwnedTensor host = OwnedTensor::empty(DType::kF32, {shape.numel() + offset});
      float* h = host.view().data<float>();
      const float* v = x.data<float>();
      for (int64_t e = 0; e < offset; ++e) h[e] = std::nanf("");
      for (int64_t e = 0; e < shape.numel(); ++e) h[offset + e] = v[e];
      buf = to_device(host, dt);
      return buf.view().flat_view(offset, shape);
    };
    const auto check = [&](const std::string& what, const Tensor& got, const Tensor& ref,
                           const Tensor& model) {
      expect_matches_reference(what, gpu(), got, ref, dt);
      expect_same_values(what, gpu(), got, model);
    };

    OwnedTensor in_buf, dout_buf, out_buf, din_buf;
    const Tensor in_d = placed(in, in_offset, in_buf), dout_d = placed(dout, in_offset, dout_buf);
    out_buf = poisoned_device(dt, {shape.numel() + out_offset});
    din_buf = poisoned_device(dt, {shape.numel() + out_offset});
    const Tensor out_d = out_buf.view().flat_view(out_offset, shape);
    const Tensor din_d = din_buf.view().flat_view(out_offset, shape);
    ops::rope_forward(gpu(), out_d, in_d, table_d, as, c.interleaved);
    ops::rope_backward(gpu(), din_d, dout_d, table_d, as, c.interleaved);
    check("rope_forward", out_d, out, out_model);
    check("rope_backward", din_d, din, din_model);
    // The inputs are untouched out of place, and nothing is written before the views.
    expect_same_values("rope_forward in", gpu(), in_d, in);
    expect_same_values("rope_backward dout", gpu(), dout_d, dout);
    if (out_offset > 0) {
      const std::vector<double> head = to_vector(to_host(gpu(), out_buf.view().flat_view(0, {1})));
      EXPECT_TRUE(std::isnan(head[0])) << "rope_forward wrote before its output view";
    }

    // In place (what the model does) gives the same values.
    OwnedTensor x_buf, dx_buf;
    const Tensor x_d = placed(in, in_offset, x_buf), dx_d = placed(dout, in_offset, dx_buf);
    ops::rope_forward(gpu(), x_d, x_d, table_d, as, c.interleaved);
    ops::rope_backward(gpu(), dx_d, dx_d, table_d, as, c.interleaved);
    check("rope_forward in place", x_d, out, out_model);
    check("rope_backward in place", dx_d, din, din_model);
  }
};
SHARDLM_GPU_DTYPES(RopeGpuTest);

TEST_P(RopeGpuTest, TableMatchesCpu) {
  // Llama 3.2's rescaling (factor 32, original context 8192) puts R = 64 pairs in all three
  // bands; the same with linear interpolation on top; linear alone.
  const ops::RopeFrequencies llama32{.base = 500000.0, .llama3_scaling = true,
                                     .scaling_factor = 32.0, .low_freq_factor = 1.0,
                                     .high_freq_factor = 4.0, .original_max_positions = 8192};
  ops::RopeFrequencies both = llama32;
  both.interpolation_factor = 3.0;
  const std::tuple<int64_t, int64_t, ops::RopeFrequencies> cases[] = {
      {4099, 128, {.base = 10000.0}}, {37, 20, {.base = 500000.0}}, {1, 2, {.base = 10.0}},
      {4099, 64, llama32}, {300, 64, both},
      {300, 64, {.base = 10000.0, .interpolation_factor = 4.0}}};
  for (const auto& [P, R, freq] : cases) {
    SCOPED_TRACE("P=" + std::to_string(P) + " R=" + std::to_string(R) + " base " +
                 std::to_string(freq.base) + (freq.llama3_scaling ? " llama3" : "") +
                 " interpolation " + std::to_string(freq.interpolation_factor));
    OwnedTensor ref = OwnedTensor::empty(DType::kF32, {P, R / 2, 2});
    ops::cpu::rope_cos_sin(cpu_, ref, freq);
    OwnedTensor dev = poisoned_device(DType::kF32, {P, R / 2, 2});
    ops::rope_cos_sin(gpu(), dev, freq);
    expect_matches_reference("rope_cos_sin", gpu(), dev, ref, DType::kF32);
  }
}

// The kernel takes 16-byte chunks (8 bf16/fp16 or 4 fp32 elements) when R/2 and HS are
// multiples of that width, else one pair at a time; comments name the path per dtype.
TEST_P(RopeGpuTest, ForwardAndBackwardMatchCpu) {
  const RopeGpuCase cases[] = {
      {2, 129, 8, 8, 64, 64, false},    // MHA, full rotation: vector; 258 rows
      {2, 129, 8, 8, 64, 64, true},
      {3, 37, 32, 8, 64, 64, false},    // Llama-1B heads (NH/G = 4): vector, 160 items a row
      {3, 37, 32, 8, 64, 64, true},
      {2, 45, 8, 2, 64, 32, false},     // rotary_percent 0.5: vector, copies dims >= R
      {2, 45, 8, 2, 64, 32, true},
      {2, 11, 6, 3, 48, 24, false},     // R/2 = 12: fp32 vector, bf16/fp16 scalar
      {2, 11, 6, 3, 48, 24, true},
      {1, 5, 4, 1, 40, 40, false},      // R/2 = 20: fp32 vector, bf16/fp16 scalar; MQA
      {1, 5, 4, 1, 40, 40, true},
      {3, 37, 12, 4, 40, 20, false},    // R/2 = 10: scalar everywhere; GQA
      {3, 37, 12, 4, 40, 20, true},
      {1, 67, 32, 8, 128, 128, true},   // Llama-like heads
      {1, 3, 64, 64, 64, 64, false},    // 512 items a row: threads loop over the row
      {1, 3, 64, 64, 64, 64, true},
      {5, 3, 4, 2, 16, 16, true},       // 6 items a row: 8 rows a block, 15 rows
      {2, 7, 4, 2, 5, 4, true},         // odd HS: scalar
      {2, 5, 6, 1, 6, 4, false},        // MQA, tiny head
      {1, 1, 2, 2, 2, 2, false},        // one token, one pair
  };
  for (const RopeGpuCase& c : cases) {
    SCOPED_TRACE(c.name());
    check_case(c);
  }
}

// Views that start off a 16-byte boundary take the one-pair-at-a-time path (same values); the
// geometry alone would allow vectors.
TEST_P(RopeGpuTest, MisalignedViewsMatchCpu) {
  for (const bool interleaved : {false, true}) {
    const RopeGpuCase c{2, 33, 32, 8, 64, 64, interleaved};
    const RopeGpuCase partial{2, 33, 8, 4, 64, 32, interleaved};
    {
      SCOPED_TRACE(c.name() + ", in and out 1 element into their buffers");
      check_case(c, 1, 1);
    }
    {
      SCOPED_TRACE(partial.name() + ", in misaligned, out aligned");
      check_case(partial, 1, 0);
    }
    {
      SCOPED_TRACE(partial.name() + ", in aligned, out misaligned");
      check_case(partial, 0, 1);
    }
    {
      SCOPED_TRACE(c.name() + ", table 8 bytes into its buffer");
      check_case(c, 0, 0, 2);
    }
  }
}

TEST_P(RopeGpuTest, RejectsNonFp32Table) {
  const DType dt = dtype();
  const ops::AttentionShape as{2, 1, 4};
  OwnedTensor x = poisoned_device(dt, {1, 3, 16});
  OwnedTensor table = poisoned_device(DType::kBF16, {3, 2, 2});
  EXPECT_SHARDLM_ERROR(ops::rope_forward(gpu(), x, x, table, as, false),
                       ErrorKind::kInvalidArgument, "cos_sin");
}

}  // namespace
}  // namespace shardlm
