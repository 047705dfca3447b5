// Attention-probability dropout on cuDNN's fused engines (cudnn_attention.h). cuDNN draws its own
// Philox mask inside the kernel, so the test reads that mask back through the op itself: with V
// holding an identity block (V[j] = e_(j - first) for the block's keys, 0 elsewhere), column c of
// query row i's output is P[i, first + c] · mask / (1-p), zero exactly where the mask drops.
// With the mask known, everything else is checked in float64 on random inputs:
//   - out and lse of the forward (P ∘ mask / (1-p) times V; lse is dropout-free);
//   - the backward dqkv, which regenerates the mask from the same seed;
//   - the kept fraction is 1 - p;
//   - the same key gives bit-identical outputs; another step, another tensor-parallel head
//     offset or another micro-batch draws another mask.
// Cases: MHA and GQA over the whole sequence (attention_forward/backward), and an MQA
// context-parallel chunk at position 128 (attention_chunk_forward/backward).
#include <cmath>

#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/cuda/cudnn_attention.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using ops::cuda::AttentionKernels;
using testing::expect_matches_reference;
using testing::from_vector;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

struct DropoutCase {
  int64_t B, T, NH, G, HS;
  int64_t rows, position;  // the query chunk; rows == T: the whole sequence
  double p;
  bool whole() const { return rows == T; }
  int64_t R() const { return NH / G; }
  int64_t W() const { return G * (R() + 2) * HS; }
  int64_t keys() const { return position + rows; }
  // Column of query head h, of group g's k and v, in a fused-QKV row.
  int64_t q_col(int64_t h) const { return (h / R()) * (R() + 2) * HS + (h % R()) * HS; }
  int64_t k_col(int64_t g) const { return g * (R() + 2) * HS + R() * HS; }
  int64_t v_col(int64_t g) const { return k_col(g) + HS; }
};
std::string describe(const DropoutCase& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " NH=" +
         std::to_string(c.NH) + " G=" + std::to_string(c.G) + " HS=" + std::to_string(c.HS) +
         " rows=" + std::to_string(c.rows) + "@" + std::to_string(c.position) +
         " p=" + std::to_string(c.p);
}

const DropoutCase kCases[] = {
    {2, 128, 2, 2, 64, 128, 0, 0.1},    // MHA, two key blocks of 64 to read the mask
    {1, 256, 4, 2, 128, 256, 0, 0.2},   // GQA (queries gathered), two key blocks of 128
    {1, 256, 2, 1, 128, 128, 128, 0.15},  // MQA chunk: rows 128..255 against 256 keys
};

// mask[((b*NH + h)*rows + i)*keys + j] for keys j <= position + i (1 kept, 0 dropped).
using Mask = std::vector<uint8_t>;

class AttentionCudnnDropoutGpuTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!testing::cuda_device_available()) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = std::make_unique<DeviceContext>(testing::make_cuda_context());
#ifndef SHARDLM_WITH_CUDNN
    GTEST_SKIP() << "built without cuDNN";
#endif
    ops::cuda::cuda_state(gpu()).set_attention_kernels(AttentionKernels::kCudnn);
  }
  DeviceContext& gpu() { return *gpu_; }

  // q_src [B, rows, W] = rows [position, position + rows) of kv (the whole sequence: kv itself).
  static OwnedTensor query_rows(const DropoutCase& c, const OwnedTensor& kv) {
    if (c.whole()) return testing::clone(kv);
    OwnedTensor q = OwnedTensor::empty(DType::kF32, Shape{c.B, c.rows, c.W()});
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t i = 0; i < c.rows; ++i)
        for (int64_t w = 0; w < c.W(); ++w)
          q.view().data<float>()[(b * c.rows + i) * c.W() + w] =
              kv.view().data<float>()[(b * c.T + c.position + i) * c.W() + w];
    return q;
  }

  // The op under test on device tensors; out [B, rows, NH*HS], lse [B, NH, rows].
  void forward(const DropoutCase& c, const ops::AttentionShape& shape, const Tensor& q_d,
               const Tensor& kv_d, Tensor out_d, Tensor lse_d, const DropoutKey& key) {
    if (c.whole())
      ops::attention_forward(gpu(), out_d, lse_d, kv_d, shape, c.p, key);
    else
      ops::attention_chunk_forward(gpu(), out_d, lse_d, q_d, kv_d, shape, {0, c.rows, c.position},
                                   c.p, key);
  }

  std::vector<double> run_forward(const DropoutCase& c, const ops::AttentionShape& shape,
                                  const OwnedTensor& kv, DType dt, const DropoutKey& key) {
    const OwnedTensor q = query_rows(c, kv);
    const OwnedTensor q_d = to_device(q, dt), kv_d = to_device(kv, dt);
    OwnedTensor out_d = testing::poisoned_device(dt, Shape{c.B, c.rows, c.NH * c.HS});
    OwnedTensor lse_d = testing::poisoned_device(DType::kF32, Shape{c.B, c.NH, c.rows});
    forward(c, shape, q_d, kv_d, out_d, lse_d, key);
    return to_vector(to_host(gpu(), out_d));
  }

  // cuDNN's mask for (case, shape, key), read block by block through identity values.
  Mask read_mask(const DropoutCase& c, const ops::AttentionShape& shape, const OwnedTensor& kv,
                 DType dt, const DropoutKey& key) {
    Mask mask(static_cast<size_t>(c.B * c.NH * c.rows * c.keys()), 2);
    for (int64_t first = 0; first < c.keys(); first += c.HS) {
      OwnedTensor kv_id = testing::clone(kv);
      float* x = kv_id.view().data<float>();
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t j = 0; j < c.T; ++j)
          for (int64_t g = 0; g < c.G; ++g)
            for (int64_t d = 0; d < c.HS; ++d)
              x[(b * c.T + j) * c.W() + c.v_col(g) + d] = (j - first == d) ? 1.0f : 0.0f;
      const std::vector<double> out = run_forward(c, shape, kv_id, dt, key);
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.NH; ++h)
          for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t d = 0; d < c.HS; ++d) {
              const int64_t j = first + d;
              if (j > c.position + i) break;
              const double v = out[static_cast<size_t>(((b * c.rows + i) * c.NH + h) * c.HS + d)];
              EXPECT_TRUE(std::isfinite(v));
              mask[static_cast<size_t>(((b * c.NH + h) * c.rows + i) * c.keys() + j)] =
                  v != 0.0 ? 1 : 0;
            }
    }
    return mask;
  }

 private:
  std::unique_ptr<DeviceContext> gpu_;
};

INSTANTIATE_TEST_SUITE_P(HalfDTypes, AttentionCudnnDropoutGpuTest,
                         ::testing::Values(DType::kBF16, DType::kF16),
                         ::shardlm::dtype_param_name);

// float64 attention with an explicit dropout mask: out, lse and, from dout and the saved (rounded)
// out, dq [B, rows, W] (q columns) and dkv [B, T, W] (k and v columns of the keys).
struct Reference {
  std::vector<double> out, lse, dq, dkv;
};
Reference reference(const DropoutCase& c, const std::vector<double>& kv, const Mask& mask,
                    const std::vector<double>& dout, const std::vector<double>& saved_out) {
  const int64_t HS = c.HS, W = c.W(), keys = c.keys();
  const double scale = 1.0 / std::sqrt(static_cast<double>(HS)), keep = 1.0 / (1.0 - c.p);
  Reference r;
  r.out.assign(static_cast<size_t>(c.B * c.rows * c.NH * HS), 0.0);
  r.lse.assign(static_cast<size_t>(c.B * c.NH * c.rows), 0.0);
  r.dq.assign(static_cast<size_t>(c.B * c.rows * W), 0.0);
  r.dkv.assign(static_cast<size_t>(c.B * c.T * W), 0.0);
  const auto at = [&](int64_t b, int64_t t, int64_t col) {
    return kv[static_cast<size_t>((b * c.T + t) * W + col)];
  };
  std::vector<double> prob(static_cast<size_t>(keys));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.NH; ++h) {
      const int64_t g = h / c.R(), qc = c.q_col(h), kc = c.k_col(g), vc = c.v_col(g);
      for (int64_t i = 0; i < c.rows; ++i) {
        const int64_t pos = c.position + i, n = pos + 1;
        double m = -1e300;
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t d = 0; d < HS; ++d) s += at(b, pos, qc + d) * at(b, j, kc + d);
          prob[j] = s * scale;
          m = std::max(m, prob[j]);
        }
        double l = 0;
        for (int64_t j = 0; j < n; ++j) l += (prob[j] = std::exp(prob[j] - m));
        for (int64_t j = 0; j < n; ++j) prob[j] /= l;
        r.lse[static_cast<size_t>((b * c.NH + h) * c.rows + i)] = m + std::log(l);
        const size_t mrow = static_cast<size_t>(((b * c.NH + h) * c.rows + i) * keys);
        const size_t orow = static_cast<size_t>(((b * c.rows + i) * c.NH + h) * HS);
        for (int64_t j = 0; j < n; ++j) {
          const double w = prob[j] * mask[mrow + j] * keep;
          for (int64_t d = 0; d < HS; ++d) r.out[orow + d] += w * at(b, j, vc + d);
        }
        // Backward: dS_j = P_j (mask_j / (1-p) · dO·V_j - D), D = dO·O (the saved output).
        double D = 0;
        for (int64_t d = 0; d < HS; ++d) D += dout[orow + d] * saved_out[orow + d];
        const size_t qrow = static_cast<size_t>((b * c.rows + i) * W);
        for (int64_t j = 0; j < n; ++j) {
          double dpd = 0;
          for (int64_t d = 0; d < HS; ++d) dpd += dout[orow + d] * at(b, j, vc + d);
          const double keep_j = mask[mrow + j] * keep;
          const double ds = prob[j] * (keep_j * dpd - D) * scale;
          const size_t krow = static_cast<size_t>((b * c.T + j) * W);
          for (int64_t d = 0; d < HS; ++d) {
            r.dq[qrow + qc + d] += ds * at(b, j, kc + d);
            r.dkv[krow + kc + d] += ds * at(b, pos, qc + d);
            r.dkv[krow + vc + d] += prob[j] * keep_j * dout[orow + d];
          }
        }
      }
    }
  return r;
}

std::vector<double> rounded(const std::vector<double>& v, DType dt) {
  const OwnedTensor t = round_to(from_vector(DType::kF32, Shape{static_cast<int64_t>(v.size())}, v),
                                 dt);
  return to_vector(t);
}

TEST_P(AttentionCudnnDropoutGpuTest, MaskIsBernoulliAndForwardBackwardFollowIt) {
  const DType dt = GetParam();
  for (const DropoutCase& c : kCases) {
    SCOPED_TRACE(describe(c));
    const ops::AttentionShape shape{c.NH, c.G, c.HS};
    const DropoutKey key{77, 3, 5, 2, kDropoutAttentionProbs};
    const Shape kv_shape{c.B, c.T, c.W()}, q_shape{c.B, c.rows, c.W()},
        out_shape{c.B, c.rows, c.NH * c.HS}, lse_shape{c.B, c.NH, c.rows};
    const OwnedTensor kv = round_to(random_tensor(DType::kF32, kv_shape, 811, 0.5), dt);
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, out_shape, 812), dt);

    const Mask mask = read_mask(c, shape, kv, dt, key);
    int64_t kept = 0, causal = 0;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.NH; ++h)
        for (int64_t i = 0; i < c.rows; ++i)
          for (int64_t j = 0; j <= c.position + i; ++j) {
            const uint8_t m = mask[static_cast<size_t>(((b * c.NH + h) * c.rows + i) * c.keys() + j)];
            ASSERT_LE(m, 1) << "mask entry not read: b " << b << " h " << h << " i " << i << " j " << j;
            kept += m;
            ++causal;
          }
    const double frac = static_cast<double>(kept) / static_cast<double>(causal);
    const double sd = std::sqrt(c.p * (1 - c.p) / static_cast<double>(causal));
    EXPECT_NEAR(frac, 1.0 - c.p, 5 * sd) << kept << " of " << causal << " kept";

    const std::vector<double> kv_v = to_vector(kv), dout_v = to_vector(dout);
    const Reference first = reference(c, kv_v, mask, dout_v, std::vector<double>(dout_v.size()));
    const std::vector<double> saved_out = rounded(first.out, dt);
    const Reference ref = reference(c, kv_v, mask, dout_v, saved_out);

    // Forward on random values against the float64 reference with cuDNN's mask.
    const OwnedTensor q = query_rows(c, kv);
    const OwnedTensor q_d = to_device(q, dt), kv_d = to_device(kv, dt);
    OwnedTensor out_d = testing::poisoned_device(dt, out_shape);
    OwnedTensor lse_d = testing::poisoned_device(DType::kF32, lse_shape);
    forward(c, shape, q_d, kv_d, out_d, lse_d, key);
    expect_matches_reference("forward out", gpu(), out_d, from_vector(DType::kF32, out_shape, ref.out),
                             dt);
    expect_matches_reference("forward lse", gpu(), lse_d, from_vector(DType::kF32, lse_shape, ref.lse),
                             dt);
    // The same key again: bit-identical.
    OwnedTensor again_d = testing::poisoned_device(dt, out_shape);
    OwnedTensor lse2_d = testing::poisoned_device(DType::kF32, lse_shape);
    forward(c, shape, q_d, kv_d, again_d, lse2_d, key);
    EXPECT_EQ(to_vector(to_host(gpu(), again_d)), to_vector(to_host(gpu(), out_d)));

    // Backward from the reference's saved output and lse; it must regenerate the same mask.
    const OwnedTensor dout_d = to_device(dout, dt);
    const OwnedTensor saved_d = to_device(from_vector(DType::kF32, out_shape, saved_out), dt);
    const OwnedTensor lse_ref_d = to_device(from_vector(DType::kF32, lse_shape, ref.lse), DType::kF32);
    if (c.whole()) {
      OwnedTensor dqkv_d = testing::poisoned_device(dt, kv_shape);
      ops::attention_backward(gpu(), dqkv_d, dout_d, kv_d, saved_d, lse_ref_d, shape, c.p, key);
      std::vector<double> dqkv = ref.dkv;  // k/v columns; add the q columns
      for (size_t e = 0; e < dqkv.size(); ++e) dqkv[e] += ref.dq[e];
      expect_matches_reference("backward dqkv", gpu(), dqkv_d,
                               from_vector(DType::kF32, kv_shape, dqkv), dt);
    } else {
      // Untouched columns and rows stay zero (chunk contract), so start from zeros.
      OwnedTensor dq_d = to_device(from_vector(DType::kF32, q_shape, std::vector<double>(
                                                                       ref.dq.size())), dt);
      OwnedTensor dkv_d = to_device(from_vector(DType::kF32, kv_shape, std::vector<double>(
                                                                          ref.dkv.size())), dt);
      ops::attention_chunk_backward(gpu(), dq_d, dkv_d, dout_d, q_d, kv_d, saved_d, lse_ref_d,
                                    shape, {0, c.rows, c.position}, c.p, key);
      expect_matches_reference("backward dq", gpu(), dq_d, from_vector(DType::kF32, q_shape, ref.dq),
                               dt);
      expect_matches_reference("backward dkv", gpu(), dkv_d,
                               from_vector(DType::kF32, kv_shape, ref.dkv), dt);
    }
  }
}

// Masks must differ wherever Megatron's would: another step or micro-batch, and another
// tensor-parallel slice of heads (head_offset). Different masks change out well beyond rounding.
TEST_P(AttentionCudnnDropoutGpuTest, AnotherStepMicroBatchOrHeadSliceDrawsAnotherMask) {
  const DType dt = GetParam();
  const DropoutCase c = kCases[0];
  const ops::AttentionShape shape{c.NH, c.G, c.HS};
  const OwnedTensor kv =
      round_to(random_tensor(DType::kF32, Shape{c.B, c.T, c.W()}, 821, 0.5), dt);
  const DropoutKey key{77, 3, 5, 2, kDropoutAttentionProbs};
  const std::vector<double> base = run_forward(c, shape, kv, dt, key);
  const auto differs = [&](const std::vector<double>& other, const char* what) {
    EXPECT_GT(testing::rel_error(other, base), 0.05) << what << " drew the same mask";
  };
  DropoutKey step = key;
  step.step += 1;
  differs(run_forward(c, shape, kv, dt, step), "step + 1");
  DropoutKey micro = key;
  micro.microbatch += 1;
  differs(run_forward(c, shape, kv, dt, micro), "micro-batch + 1");
  ops::AttentionShape slice = shape;
  slice.head_offset = c.NH;
  slice.dropout_num_heads = 2 * c.NH;
  differs(run_forward(c, slice, kv, dt, key), "head offset NH");
  EXPECT_EQ(run_forward(c, shape, kv, dt, key), base);
}

}  // namespace
}  // namespace shardlm
