// GPU tests of the mixture-of-experts ops against the CPU backend on the same rounded inputs
// (fp32, bf16, fp16 rows; fp32 side tensors), on poisoned outputs: the router's indices equal
// the CPU's exactly (well separated logits, exact ties, and up to the 1024-expert limit), its
// probabilities and both backwards within tolerance, the score sums and gather_sum_rows
// bit-identical across runs, the row gathers on the 16-byte and the element path, bad index
// values handled as ops.h documents, and zero-row calls.
#include <string>
#include <utility>
#include <vector>

#include "shardlm/ops/cuda/cuda_context.h"
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::from_vector;
using testing::poisoned_device;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

class MoeGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(MoeGpuTest);

// fp32 logits [N, E] whose rows are shuffled multiples of 1/8 in [-E/16, E/16): distinct and
// exact in bf16 and fp16 for E <= 256, so no rounding can tie or reorder them.
OwnedTensor separated_logits(int64_t N, int64_t E, uint64_t seed) {
  std::vector<double> values = to_vector(testing::random_permutations(N, E, seed));
  for (double& v : values) v = (v - static_cast<double>(E / 2)) / 8.0;
  return from_vector(DType::kF32, {N, E}, values);
}

// Runs the router on the GPU (dispatcher, poisoned outputs) and on the CPU (fp32) and expects
// the same indices and probabilities within fp32 tolerance.
void expect_router_matches_cpu(DeviceContext& gpu, DeviceContext& cpu, const OwnedTensor& logits,
                               DType dt, int64_t k, bool pre_softmax) {
  const int64_t N = logits.view().size(0);
  OwnedTensor probs = OwnedTensor::empty(DType::kF32, {N, k});
  OwnedTensor indices = OwnedTensor::empty(DType::kI32, {N, k});
  ops::cpu::moe_topk_router_forward(cpu, probs, indices, logits, k, pre_softmax);
  OwnedTensor probs_d = poisoned_device(DType::kF32, {N, k});
  OwnedTensor indices_d = poisoned_device(DType::kI32, {N, k});
  ops::moe_topk_router_forward(gpu, probs_d, indices_d, to_device(logits, dt), k, pre_softmax);
  EXPECT_EQ(to_vector(to_host(gpu, indices_d)), to_vector(indices));
  expect_matches_reference("moe_topk_router_forward probs", gpu, probs_d, probs, DType::kF32);
}

TEST_P(MoeGpuTest, RouterForwardMatchesCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 37;  // not a multiple of the 8 warps of a block
  for (const int64_t E : {6, 40, 256}) {
    const OwnedTensor logits = separated_logits(N, E, 800 + E);
    for (const bool pre : {false, true}) {
      for (const int64_t k : {1, 2, 4}) {
        SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k) +
                     (pre ? " pre-softmax" : " top-k"));
        expect_router_matches_cpu(gpu(), cpu_, logits, dt, k, pre);
      }
    }
  }
  // k = E (every expert, > 32 so the rounds wrap around the lanes).
  expect_router_matches_cpu(gpu(), cpu_, separated_logits(N, 40, 801), dt, 40, false);
}

TEST_P(MoeGpuTest, RouterForwardBreaksTiesLikeCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 19;
  for (const int64_t E : {9, 300, 1024}) {
    // Random values rounded to the dtype (bf16 ties many of 1024), plus exact-tie rows: all
    // equal, and three values repeated around the row.
    std::vector<double> v = to_vector(round_to(random_tensor(DType::kF32, {N, E}, 810 + E), dt));
    for (int64_t e = 0; e < E; ++e) {
      v[0 * E + e] = 0.5;
      v[1 * E + e] = static_cast<double>(e % 3) - 1.0;
    }
    const OwnedTensor logits = from_vector(DType::kF32, {N, E}, v);
    for (const bool pre : {false, true}) {
      for (const int64_t k : {1, 2, 4, 8}) {
        SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k) +
                     (pre ? " pre-softmax" : " top-k"));
        expect_router_matches_cpu(gpu(), cpu_, logits, dt, k, pre);
      }
    }
    // The all-equal row takes experts 0..k-1 in order.
    OwnedTensor probs_d = poisoned_device(DType::kF32, {N, 4});
    OwnedTensor indices_d = poisoned_device(DType::kI32, {N, 4});
    ops::moe_topk_router_forward(gpu(), probs_d, indices_d, to_device(logits, dt), 4, false);
    const std::vector<double> got = to_vector(to_host(gpu(), indices_d));
    EXPECT_EQ(std::vector<double>(got.begin(), got.begin() + 4), (std::vector<double>{0, 1, 2, 3}));
  }
}

TEST_P(MoeGpuTest, RouterRejectsMoreThan1024Experts) {
  const OwnedTensor logits_d = to_device(random_tensor(DType::kF32, {2, 1025}, 820), dtype());
  OwnedTensor probs_d = poisoned_device(DType::kF32, {2, 2});
  OwnedTensor indices_d = poisoned_device(DType::kI32, {2, 2});
  EXPECT_SHARDLM_ERROR(ops::moe_topk_router_forward(gpu(), probs_d, indices_d, logits_d, 2, false),
                       ErrorKind::kInvalidArgument, "1 <= E <= 1024");
  OwnedTensor sums_d = poisoned_device(DType::kF32, {1025});
  EXPECT_SHARDLM_ERROR(ops::moe_router_score_sums(gpu(), sums_d, logits_d),
                       ErrorKind::kInvalidArgument, "moe_router_score_sums on CUDA");
}

TEST_P(MoeGpuTest, RouterBackwardMatchesCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 45;
  for (const int64_t E : {6, 40, 256, 1024}) {
    const OwnedTensor logits = round_to(separated_logits(N, E, 830 + E), dt);  // E = 1024: rounds
    const OwnedTensor logits_d = to_device(logits, dt);
    for (const bool pre : {false, true}) {
      for (const int64_t k : {1, 2, 4}) {
        SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k) +
                     (pre ? " pre-softmax" : " top-k"));
        OwnedTensor probs = OwnedTensor::empty(DType::kF32, {N, k});
        OwnedTensor indices = OwnedTensor::empty(DType::kI32, {N, k});
        ops::cpu::moe_topk_router_forward(cpu_, probs, indices, logits, k, pre);
        const OwnedTensor dprobs = random_tensor(DType::kF32, {N, k}, 831 + k);
        OwnedTensor dlogits = OwnedTensor::empty(DType::kF32, {N, E});
        ops::cpu::moe_topk_router_backward(cpu_, dlogits, dprobs, logits, indices, pre);
        OwnedTensor dlogits_d = poisoned_device(dt, {N, E});
        ops::moe_topk_router_backward(gpu(), dlogits_d, to_device(dprobs, DType::kF32), logits_d,
                                      to_device(indices, DType::kI32), pre);
        expect_matches_reference("moe_topk_router_backward dlogits", gpu(), dlogits_d, dlogits, dt);
      }
    }
  }
}

TEST_P(MoeGpuTest, ScoreSumsMatchCpuAndAreDeterministic) {
  const DType dt = dtype();
  for (const int64_t N : {1, 37, 5000}) {  // 5000 rows: 79 blocks of partials
    for (const int64_t E : {8, 160, 1024}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " E=" + std::to_string(E));
      const OwnedTensor logits = round_to(random_tensor(DType::kF32, {N, E}, 840 + N + E), dt);
      OwnedTensor sums = OwnedTensor::empty(DType::kF32, {E});
      ops::cpu::moe_router_score_sums(cpu_, sums, logits);
      const OwnedTensor logits_d = to_device(logits, dt);
      OwnedTensor first_d = poisoned_device(DType::kF32, {E});
      OwnedTensor second_d = poisoned_device(DType::kF32, {E});
      ops::moe_router_score_sums(gpu(), first_d, logits_d);
      ops::moe_router_score_sums(gpu(), second_d, logits_d);
      expect_matches_reference("moe_router_score_sums", gpu(), first_d, sums, DType::kF32);
      EXPECT_EQ(to_vector(to_host(gpu(), first_d)), to_vector(to_host(gpu(), second_d)));
    }
  }
}

TEST_P(MoeGpuTest, AuxLossBackwardAccumulatesLikeCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 53;
  for (const int64_t E : {8, 100, 1024}) {
    SCOPED_TRACE("E=" + std::to_string(E));
    const OwnedTensor logits = round_to(random_tensor(DType::kF32, {N, E}, 850 + E), dt);
    const OwnedTensor weights = random_tensor(DType::kF32, {E}, 851);
    const OwnedTensor prior = round_to(random_tensor(DType::kF32, {N, E}, 852, 0.01), dt);
    OwnedTensor dlogits = testing::clone(prior);
    ops::cpu::moe_aux_loss_backward(cpu_, dlogits, logits, weights);
    OwnedTensor dlogits_d = to_device(prior, dt);
    ops::moe_aux_loss_backward(gpu(), dlogits_d, to_device(logits, dt),
                               to_device(weights, DType::kF32));
    expect_matches_reference("moe_aux_loss_backward dlogits (+=)", gpu(), dlogits_d, dlogits, dt);
  }
}

TEST_P(MoeGpuTest, ZLossMatchesCpu) {
  const DType dt = dtype();
  for (const int64_t N : {1, 53}) {
    for (const int64_t E : {8, 100, 1024}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " E=" + std::to_string(E));
      const OwnedTensor logits = round_to(random_tensor(DType::kF32, {N, E}, 860 + E, 3.0), dt);
      const OwnedTensor logits_d = to_device(logits, dt);
      OwnedTensor lse = OwnedTensor::empty(DType::kF32, {N});
      ops::cpu::moe_router_logsumexp(cpu_, lse, logits);
      OwnedTensor lse_d = poisoned_device(DType::kF32, {N});
      ops::moe_router_logsumexp(gpu(), lse_d, logits_d);
      expect_matches_reference("moe_router_logsumexp", gpu(), lse_d, lse, DType::kF32);
      const OwnedTensor prior = round_to(random_tensor(DType::kF32, {N, E}, 861, 0.01), dt);
      OwnedTensor dlogits = testing::clone(prior);
      ops::cpu::moe_z_loss_backward(cpu_, dlogits, logits, 0.25);
      OwnedTensor dlogits_d = to_device(prior, dt);
      ops::moe_z_loss_backward(gpu(), dlogits_d, logits_d, 0.25);
      expect_matches_reference("moe_z_loss_backward dlogits (+=)", gpu(), dlogits_d, dlogits, dt);
    }
  }
}

// Rows [R, H] on the device twice: a tensor of their own (16-byte aligned: the vector path when
// H allows) and a view one element into a larger buffer (misaligned: the element path).
struct DeviceRows {
  OwnedTensor aligned;
  OwnedTensor buffer;  // holds the misaligned view
  std::vector<std::pair<std::string, Tensor>> views() const {
    return {{"aligned", aligned.view()},
            {"misaligned", buffer.view().flat_view(1, aligned.view().shape())}};
  }
};
DeviceRows device_rows(const OwnedTensor& host, DType dt) {
  std::vector<double> shifted = to_vector(host);
  shifted.insert(shifted.begin(), 0.0);
  return {to_device(host, dt),
          to_device(from_vector(DType::kF32, {host.view().numel() + 1}, shifted), dt)};
}

TEST_P(MoeGpuTest, GatherRowsMatchesCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 50, M = 120;
  const OwnedTensor index = random_ints({M}, N, 860);
  const OwnedTensor scale = random_tensor(DType::kF32, {M}, 861);
  for (const int64_t H : {64, 13}) {
    const OwnedTensor in = round_to(random_tensor(DType::kF32, {N, H}, 862 + H), dt);
    const DeviceRows in_d = device_rows(in, dt);
    for (const auto& [where, in_view] : in_d.views()) {
      for (const bool scaled : {false, true}) {
        SCOPED_TRACE("H=" + std::to_string(H) + " " + where + (scaled ? " scaled" : ""));
        OwnedTensor out = OwnedTensor::empty(DType::kF32, {M, H});
        ops::cpu::gather_rows(cpu_, out, in, index, scaled ? scale.view() : Tensor());
        OwnedTensor out_d = poisoned_device(dt, {M, H});
        const OwnedTensor scale_d = to_device(scale, DType::kF32);
        ops::gather_rows(gpu(), out_d, in_view, to_device(index, DType::kI32),
                         scaled ? scale_d.view() : Tensor());
        expect_matches_reference("gather_rows out", gpu(), out_d, out, dt);
        if (!scaled)  // a copy: exact
          EXPECT_EQ(to_vector(to_host(gpu(), out_d)), to_vector(out));
      }
    }
  }
}

// The combine (gather_sum_rows, deterministic) and its weight gradient (gathered_row_dot).
TEST_P(MoeGpuTest, GatherSumRowsAndRowDotMatchCpu) {
  const DType dt = dtype();
  constexpr int64_t N = 70;
  for (const int64_t k : {1, 2, 4}) {
    const int64_t M = N * k;
    const OwnedTensor slots = random_ints({N, k}, static_cast<int32_t>(M), 870 + k);
    const OwnedTensor weights = random_tensor(DType::kF32, {N, k}, 871);
    const OwnedTensor slots_d = to_device(slots, DType::kI32);
    const OwnedTensor weights_d = to_device(weights, DType::kF32);
    for (const int64_t H : {64, 13, 1000}) {
      const OwnedTensor in = round_to(random_tensor(DType::kF32, {M, H}, 872 + H), dt);
      const OwnedTensor dout = round_to(random_tensor(DType::kF32, {N, H}, 873 + H), dt);
      OwnedTensor dweights = OwnedTensor::empty(DType::kF32, {N, k});
      ops::cpu::gathered_row_dot(cpu_, dweights, dout, in, slots);
      const DeviceRows in_d = device_rows(in, dt);
      for (const auto& [where, in_view] : in_d.views()) {
        SCOPED_TRACE("k=" + std::to_string(k) + " H=" + std::to_string(H) + " " + where);
        for (const bool weighted : {false, true}) {
          OwnedTensor out = OwnedTensor::empty(DType::kF32, {N, H});
          ops::cpu::gather_sum_rows(cpu_, out, in, slots, weighted ? weights.view() : Tensor());
          const Tensor w = weighted ? weights_d.view() : Tensor();
          OwnedTensor first_d = poisoned_device(dt, {N, H});
          OwnedTensor second_d = poisoned_device(dt, {N, H});
          ops::gather_sum_rows(gpu(), first_d, in_view, slots_d, w);
          ops::gather_sum_rows(gpu(), second_d, in_view, slots_d, w);
          expect_matches_reference(
              weighted ? "gather_sum_rows out (weighted)" : "gather_sum_rows out", gpu(), first_d,
              out, dt);
          EXPECT_EQ(to_vector(to_host(gpu(), first_d)), to_vector(to_host(gpu(), second_d)));
        }
        OwnedTensor dweights_d = poisoned_device(DType::kF32, {N, k});
        ops::gathered_row_dot(gpu(), dweights_d, to_device(dout, dt), in_view, slots_d);
        expect_matches_reference("gathered_row_dot dweights", gpu(), dweights_d, dweights,
                                 DType::kF32);
      }
    }
  }
}

// ops.h: out-of-range indices are never read; gather_rows writes a zero row, gather_sum_rows
// leaves the term out, gathered_row_dot writes 0, the router backward ignores the entry.
TEST_P(MoeGpuTest, BadIndicesAreSkippedNotRead) {
  const DType dt = dtype();
  constexpr int64_t N = 8, M = 6, H = 16, k = 2, E = 5;
  const OwnedTensor in = round_to(random_tensor(DType::kF32, {N, H}, 890), dt);
  std::vector<double> index = to_vector(random_ints({M}, N, 891));
  index[1] = N;
  index[4] = -7;
  std::vector<double> valid = index;
  valid[1] = valid[4] = 0;
  OwnedTensor want = OwnedTensor::empty(DType::kF32, {M, H});
  ops::cpu::gather_rows(cpu_, want, in, from_vector(DType::kI32, {M}, valid), Tensor());
  for (int64_t h = 0; h < H; ++h)
    want.view().data<float>()[1 * H + h] = want.view().data<float>()[4 * H + h] = 0.0f;
  OwnedTensor out_d = poisoned_device(dt, {M, H});
  ops::gather_rows(gpu(), out_d, to_device(in, dt),
                   to_device(from_vector(DType::kI32, {M}, index), DType::kI32), Tensor());
  EXPECT_EQ(to_vector(to_host(gpu(), out_d)), to_vector(want));

  // gather_sum_rows / gathered_row_dot over in [N, H] with slots [M, k]: slot 3 is bad.
  std::vector<double> slots = to_vector(random_ints({M, k}, N, 892));
  slots[3] = 1 << 20;
  std::vector<double> weights = to_vector(random_tensor(DType::kF32, {M, k}, 893));
  std::vector<double> zeroed = weights, fixed = slots;
  zeroed[3] = 0;  // the bad term contributes nothing
  fixed[3] = 0;
  OwnedTensor sum_want = OwnedTensor::empty(DType::kF32, {M, H});
  ops::cpu::gather_sum_rows(cpu_, sum_want, in, from_vector(DType::kI32, {M, k}, fixed),
                            from_vector(DType::kF32, {M, k}, zeroed));
  const OwnedTensor slots_d = to_device(from_vector(DType::kI32, {M, k}, slots), DType::kI32);
  OwnedTensor sum_d = poisoned_device(dt, {M, H});
  ops::gather_sum_rows(gpu(), sum_d, to_device(in, dt), slots_d,
                       to_device(from_vector(DType::kF32, {M, k}, weights), DType::kF32));
  expect_matches_reference("gather_sum_rows with a bad slot", gpu(), sum_d, sum_want, dt);
  OwnedTensor dot_d = poisoned_device(DType::kF32, {M, k});
  ops::gathered_row_dot(gpu(), dot_d, to_device(sum_want, dt), to_device(in, dt), slots_d);
  EXPECT_EQ(to_vector(to_host(gpu(), dot_d))[3], 0.0);

  // Router backward: an index past E is ignored, like a zero dprob at a valid index.
  const OwnedTensor logits = round_to(random_tensor(DType::kF32, {M, E}, 894), dt);
  std::vector<double> idx = {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1};
  std::vector<double> dprobs = to_vector(random_tensor(DType::kF32, {M, k}, 895));
  std::vector<double> bad_idx = idx;
  bad_idx[5] = E;
  dprobs[5] = 0;
  OwnedTensor dlogits = OwnedTensor::empty(DType::kF32, {M, E});
  const OwnedTensor dprobs_h = from_vector(DType::kF32, {M, k}, dprobs);
  ops::cpu::moe_topk_router_backward(cpu_, dlogits, dprobs_h, logits,
                                     from_vector(DType::kI32, {M, k}, idx), true);
  OwnedTensor dlogits_d = poisoned_device(dt, {M, E});
  ops::moe_topk_router_backward(
      gpu(), dlogits_d, to_device(dprobs_h, DType::kF32), to_device(logits, dt),
      to_device(from_vector(DType::kI32, {M, k}, bad_idx), DType::kI32), true);
  expect_matches_reference("router backward with a bad index", gpu(), dlogits_d, dlogits, dt);
}

TEST_P(MoeGpuTest, ZeroRowsLaunchNothing) {
  const DType dt = dtype();
  constexpr int64_t E = 8, k = 2, H = 16;
  const Device dev = Device::cuda(0);
  const OwnedTensor logits = OwnedTensor::empty(dt, {0, E}, dev);
  OwnedTensor probs = OwnedTensor::empty(DType::kF32, {0, k}, dev);
  OwnedTensor indices = OwnedTensor::empty(DType::kI32, {0, k}, dev);
  OwnedTensor dlogits = OwnedTensor::empty(dt, {0, E}, dev);
  ops::moe_topk_router_forward(gpu(), probs, indices, logits, k, true);
  ops::moe_topk_router_backward(gpu(), dlogits, probs, logits, indices, false);
  OwnedTensor sums_d = poisoned_device(DType::kF32, {E});
  ops::moe_router_score_sums(gpu(), sums_d, logits);
  EXPECT_EQ(to_vector(to_host(gpu(), sums_d)), std::vector<double>(E, 0.0));
  ops::moe_aux_loss_backward(gpu(), dlogits, logits, sums_d);
  const OwnedTensor in = to_device(random_tensor(DType::kF32, {4, H}, 896), dt);
  OwnedTensor none = OwnedTensor::empty(dt, {0, H}, dev);
  const OwnedTensor no_slots = OwnedTensor::empty(DType::kI32, {0, k}, dev);
  ops::gather_rows(gpu(), none, in, OwnedTensor::empty(DType::kI32, {0}, dev), Tensor());
  ops::gather_sum_rows(gpu(), none, in, no_slots, Tensor());
  OwnedTensor no_weights = OwnedTensor::empty(DType::kF32, {0, k}, dev);
  ops::gathered_row_dot(gpu(), no_weights, none, in, no_slots);
  ops::cuda::synchronize(gpu());
}

}  // namespace
}  // namespace shardlm
