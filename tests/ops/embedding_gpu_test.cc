// GPU tests of the token (+ position) embedding: forward values, backward accumulation into
// dwte (repeated tokens included) and dwpe, and the out-of-range token error.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

class EmbeddingGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(EmbeddingGpuTest);

TEST_P(EmbeddingGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  const int64_t B = 3, T = 37, V = 101, C = 72, P = 40;
  const OwnedTensor tokens = random_ints({B, T}, static_cast<int32_t>(V), 51);
  const OwnedTensor wte = round_to(random_tensor(DType::kF32, {V, C}, 52), dt);
  const OwnedTensor wpe = round_to(random_tensor(DType::kF32, {P, C}, 53), dt);
  const OwnedTensor dout = round_to(random_tensor(DType::kF32, {B, T, C}, 54), dt);
  const OwnedTensor dwte0 = round_to(random_tensor(DType::kF32, {V, C}, 55), dt);
  const OwnedTensor dwpe0 = round_to(random_tensor(DType::kF32, {P, C}, 56), dt);
  const OwnedTensor tokens_d = to_device(tokens, DType::kI32);
  const OwnedTensor wte_d = to_device(wte, dt), wpe_d = to_device(wpe, dt);

  for (bool with_wpe : {true, false}) {
    SCOPED_TRACE(with_wpe ? "with wpe" : "without wpe");
    OwnedTensor out = OwnedTensor::empty(DType::kF32, {B, T, C});
    ops::cpu::embedding_forward(cpu_, out, tokens, wte, with_wpe ? wpe.view() : Tensor());
    OwnedTensor out_d = poisoned_device(dt, {B, T, C});
    ops::embedding_forward(gpu(), out_d, tokens_d, wte_d, with_wpe ? wpe_d.view() : Tensor());
    expect_matches_reference("embedding_forward", gpu(), out_d, out, dt);

    OwnedTensor dwte = testing::clone(dwte0), dwpe = testing::clone(dwpe0);
    ops::cpu::embedding_backward(cpu_, dwte, with_wpe ? dwpe.view() : Tensor(), dout, tokens);
    OwnedTensor dwte_d = to_device(dwte0, dt), dwpe_d = to_device(dwpe0, dt);
    ops::embedding_backward(gpu(), dwte_d, with_wpe ? dwpe_d.view() : Tensor(),
                            to_device(dout, dt), tokens_d);
    expect_matches_reference("embedding_backward dwte (+=)", gpu(), dwte_d, dwte, dt);
    expect_matches_reference("embedding_backward dwpe (+=)", gpu(), dwpe_d, dwpe, dt);
  }
}

TEST_P(EmbeddingGpuTest, TokenOutOfRangeThrows) {
  const int64_t V = 50, C = 16;
  OwnedTensor tokens = random_ints({2, 9}, static_cast<int32_t>(V), 57);
  tokens.view().data<int32_t>()[11] = static_cast<int32_t>(V);  // one past the end
  OwnedTensor out_d = poisoned_device(dtype(), {2, 9, C});
  const OwnedTensor wte_d = to_device(random_tensor(DType::kF32, {V, C}, 58), dtype());
  EXPECT_SHARDLM_ERROR(
      ops::embedding_forward(gpu(), out_d, to_device(tokens, DType::kI32), wte_d, Tensor()),
      ErrorKind::kInvalidArgument, "outside [0, 50)");
  tokens.view().data<int32_t>()[11] = -1;
  EXPECT_SHARDLM_ERROR(
      ops::embedding_forward(gpu(), out_d, to_device(tokens, DType::kI32), wte_d, Tensor()),
      ErrorKind::kInvalidArgument, "outside [0, 50)");
}

}  // namespace
}  // namespace shardlm
