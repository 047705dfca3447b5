// GPU tests of the vocab-parallel embedding: a shard [start, start + VL) of a larger vocabulary,
// tokens inside and outside it (and repeated), forward values (zeros outside the shard) and
// backward accumulation, against the CPU backend on poisoned outputs; negative ids throw.
#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::expect_matches_reference;
using testing::poisoned_device;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;

class VocabParallelEmbeddingGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(VocabParallelEmbeddingGpuTest);

TEST_P(VocabParallelEmbeddingGpuTest, ForwardBackwardMatchCpu) {
  const DType dt = dtype();
  const int64_t B = 3, T = 37, VL = 41, C = 72, start = 2 * VL;  // third of four shards
  OwnedTensor tokens = random_ints({B, T}, static_cast<int32_t>(4 * VL), 81);
  tokens.view().data<int32_t>()[5] = tokens.view().data<int32_t>()[9] = start + 3;  // repeated
  const OwnedTensor wte = round_to(random_tensor(DType::kF32, {VL, C}, 82), dt);
  const OwnedTensor dout = round_to(random_tensor(DType::kF32, {B * T, C}, 83), dt);
  const OwnedTensor dwte0 = round_to(random_tensor(DType::kF32, {VL, C}, 84), dt);
  const OwnedTensor tokens_d = to_device(tokens, DType::kI32);

  OwnedTensor out = OwnedTensor::empty(DType::kF32, {B * T, C});
  ops::cpu::vocab_parallel_embedding_forward(cpu_, out, tokens, wte, start);
  OwnedTensor out_d = poisoned_device(dt, {B * T, C});
  ops::vocab_parallel_embedding_forward(gpu(), out_d, tokens_d, to_device(wte, dt), start);
  expect_matches_reference("vocab_parallel_embedding_forward", gpu(), out_d, out, dt);

  OwnedTensor dwte = testing::clone(dwte0);
  ops::cpu::vocab_parallel_embedding_backward(cpu_, dwte, dout, tokens, start);
  OwnedTensor dwte_d = to_device(dwte0, dt);
  ops::vocab_parallel_embedding_backward(gpu(), dwte_d, to_device(dout, dt), tokens_d, start);
  expect_matches_reference("vocab_parallel_embedding_backward dwte (+=)", gpu(), dwte_d, dwte, dt);
}

TEST_P(VocabParallelEmbeddingGpuTest, NegativeTokenThrows) {
  const int64_t VL = 20, C = 16;
  OwnedTensor tokens = random_ints({2, 9}, static_cast<int32_t>(VL), 85);
  tokens.view().data<int32_t>()[11] = -4;
  OwnedTensor out_d = poisoned_device(dtype(), {18, C});
  const OwnedTensor wte_d = to_device(random_tensor(DType::kF32, {VL, C}, 86), dtype());
  EXPECT_SHARDLM_ERROR(ops::vocab_parallel_embedding_forward(gpu(), out_d,
                                                             to_device(tokens, DType::kI32),
                                                             wte_d, 0),
                       ErrorKind::kInvalidArgument, "negative");
}

}  // namespace
}  // namespace shardlm
