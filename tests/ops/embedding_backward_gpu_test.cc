// GPU tests of the embedding backwards' deterministic scatter-add (ops/cuda/sorted_scatter_add.h)
// for embedding_backward and vocab_parallel_embedding_backward: dout in fp32, bf16 or fp16 into
// an fp32 dwte (gradient-accumulation fusion: the master gradient) or one of dout's dtype, with
// heavy repetition (tokens from five ids), every token equal, and uniform tokens, from a few
// rows up to 64K rows and 16K columns. Each result:
//  - equals the fp64 CPU reference (prior + exact sums) within fp32 rounding of an in-order fp32
//    sum of k rows (~1e-6 + 2e-7·sqrt(k) over the whole update), or the dtype's tolerance when
//    dwte is 16-bit;
//  - leaves rows no token (of the shard) maps to bit-identical to the prior;
//  - is bit-identical over two calls (no atomics: the same bits every run).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tests/ops/gpu_test_common.h"

namespace shardlm {
namespace {

using testing::convert;
using testing::random_ints;
using testing::random_tensor;
using testing::round_to;
using testing::to_device;
using testing::to_host;
using testing::to_vector;

// [B, T] ids drawn uniformly from `ids` (deterministic per seed).
OwnedTensor tokens_from(const std::vector<int32_t>& ids, int64_t B, int64_t T, uint64_t seed) {
  OwnedTensor t = random_ints({B, T}, static_cast<int32_t>(ids.size()), seed);
  int32_t* p = t.view().data<int32_t>();
  for (int64_t i = 0; i < B * T; ++i) p[i] = ids[static_cast<size_t>(p[i])];
  return t;
}

// The most rows any one id has.
int64_t max_repeats(const Tensor& tokens) {
  std::map<int32_t, int64_t> count;
  int64_t most = 0;
  for (int64_t i = 0; i < tokens.numel(); ++i)
    most = std::max(most, ++count[tokens.data<int32_t>()[i]]);
  return most;
}

// dwte grad_dtype from `prior`; the op ran twice on the GPU into `first` and `second`; `want` is
// the fp64 reference. `touched[r]`: some token maps to row r.
void expect_scatter_result(const DeviceContext& gpu, const Tensor& first, const Tensor& second,
                           const Tensor& prior, const Tensor& want,
                           const std::vector<bool>& touched, DType dout_dtype, int64_t repeats) {
  const OwnedTensor a = to_host(gpu, first), b = to_host(gpu, second);
  ASSERT_EQ(a.view().nbytes(), b.view().nbytes());
  EXPECT_EQ(std::memcmp(a.view().raw(), b.view().raw(), a.view().nbytes()), 0)
      << "two calls on the same inputs differ: the backward is not deterministic";
  const std::vector<double> got = to_vector(a.view()), p = to_vector(prior),
                            w = to_vector(want);
  const int64_t rows = static_cast<int64_t>(touched.size());
  const int64_t C = static_cast<int64_t>(got.size()) / rows;
  std::vector<double> delta_got(got.size()), delta_want(got.size());
  int64_t changed_untouched = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(r * C + c);
      delta_got[i] = got[i] - p[i];
      delta_want[i] = w[i] - p[i];
      if (!touched[static_cast<size_t>(r)] && got[i] != p[i]) ++changed_untouched;
    }
  EXPECT_EQ(changed_untouched, 0) << "elements of rows no token maps to changed";
  const DType grad_dtype = first.dtype();
  const double tol = grad_dtype == DType::kF32
                         ? 1e-6 + 2e-7 * std::sqrt(static_cast<double>(repeats))
                         : testing::tolerance_for(grad_dtype);
  EXPECT_LT(testing::rel_error(delta_got, delta_want), tol)
      << dtype_name(dout_dtype) << " dout into " << dtype_name(grad_dtype) << " dwte, up to "
      << repeats << " rows per token";
}

// The dwte dtypes to test for dout in `dt`: fp32 (the master gradient) and dt itself.
std::vector<DType> grad_dtypes(DType dt) {
  return dt == DType::kF32 ? std::vector<DType>{DType::kF32}
                           : std::vector<DType>{DType::kF32, dt};
}

class EmbeddingBackwardGpuTest : public GpuOpTest {};
SHARDLM_GPU_DTYPES(EmbeddingBackwardGpuTest);

TEST_P(EmbeddingBackwardGpuTest, SumsEachTokensRowsInFp32Deterministically) {
  const DType dt = dtype();
  struct Case {
    int64_t B, T, V, C;
    const char* tokens;  // five | same | uniform
  };
  const Case cases[] = {
      {3, 37, 101, 72, "five"},     {3, 37, 101, 72, "same"},       {3, 37, 101, 72, "uniform"},
      {8, 1024, 5003, 320, "five"}, {8, 1024, 5003, 320, "same"},   {8, 1024, 5003, 320, "uniform"},
      {2, 64, 300, 16384, "five"},  {64, 1024, 50304, 64, "same"},
  };
  uint64_t seed = 600;
  for (const Case& k : cases) {
    const auto V32 = static_cast<int32_t>(k.V);
    const std::string pattern = k.tokens;
    const OwnedTensor tokens =
        pattern == "uniform" ? random_ints({k.B, k.T}, V32, seed++)
        : pattern == "same"  ? tokens_from({V32 / 2}, k.B, k.T, seed++)
                             : tokens_from({0, 1, V32 / 2, V32 - 2, V32 - 1}, k.B, k.T, seed++);
    std::vector<bool> touched(static_cast<size_t>(k.V), false);
    for (int64_t i = 0; i < tokens.view().numel(); ++i)
      touched[static_cast<size_t>(tokens.view().data<int32_t>()[i])] = true;
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {k.B, k.T, k.C}, seed++), dt);
    const OwnedTensor tokens_d = to_device(tokens, DType::kI32);
    const OwnedTensor dout_d = to_device(dout, dt);
    for (DType grad_dtype : grad_dtypes(dt)) {
      SCOPED_TRACE("B=" + std::to_string(k.B) + " T=" + std::to_string(k.T) +
                   " V=" + std::to_string(k.V) + " C=" + std::to_string(k.C) + " tokens " +
                   pattern + ", " + dtype_name(dt) + " dout, " + dtype_name(grad_dtype) +
                   " dwte");
      const OwnedTensor prior =
          round_to(random_tensor(DType::kF32, {k.V, k.C}, seed++), grad_dtype);
      OwnedTensor want = convert(prior, DType::kF64);  // + the exact sums (CPU, fp64)
      ops::embedding_backward(cpu_, want, Tensor(), dout, tokens);
      OwnedTensor first = to_device(prior, grad_dtype), second = to_device(prior, grad_dtype);
      ops::embedding_backward(gpu(), first, Tensor(), dout_d, tokens_d);
      ops::embedding_backward(gpu(), second, Tensor(), dout_d, tokens_d);
      expect_scatter_result(gpu(), first, second, prior, want, touched, dt, max_repeats(tokens));
    }
  }
}

TEST_P(EmbeddingBackwardGpuTest, PositionGradientStaysInDoutsDtype) {
  // With an fp32 dwte the position gradient is still dout's dtype, as before.
  const DType dt = dtype();
  const int64_t B = 4, T = 33, V = 57, C = 40, P = 40;
  const OwnedTensor tokens = tokens_from({2, 9, 30}, B, T, 650);
  const OwnedTensor dout = round_to(random_tensor(DType::kF32, {B, T, C}, 651), dt);
  const OwnedTensor dwpe0 = round_to(random_tensor(DType::kF32, {P, C}, 652), dt);
  OwnedTensor dwpe = testing::clone(dwpe0);
  ops::cpu::embedding_backward(cpu_, OwnedTensor::zeros(DType::kF32, {V, C}), dwpe, dout, tokens);
  OwnedTensor dwte_d = to_device(OwnedTensor::zeros(DType::kF32, {V, C}), DType::kF32);
  OwnedTensor dwpe_d = to_device(dwpe0, dt);
  ops::embedding_backward(gpu(), dwte_d, dwpe_d, to_device(dout, dt),
                          to_device(tokens, DType::kI32));
  testing::expect_matches_reference("embedding_backward dwpe (+=)", gpu(), dwpe_d, dwpe, dt);
}

TEST_P(EmbeddingBackwardGpuTest, RejectsOtherGradientDtypes) {
  const DType dt = dtype();
  const int64_t V = 20, C = 16;
  const OwnedTensor tokens_d = to_device(random_ints({2, 9}, static_cast<int32_t>(V), 660),
                                         DType::kI32);
  const OwnedTensor dout_d = to_device(random_tensor(DType::kF32, {2, 9, C}, 661), dt);
  // A 16-bit dwte other than dout's dtype, or fp64 (no fp64 on CUDA).
  const DType other = dt == DType::kBF16 ? DType::kF16 : DType::kBF16;
  for (DType bad : {other, DType::kF64}) {
    OwnedTensor dwte_d = OwnedTensor::zeros(bad, {V, C}, Device::cuda(0));
    EXPECT_SHARDLM_ERROR(ops::embedding_backward(gpu(), dwte_d, Tensor(), dout_d, tokens_d),
                         ErrorKind::kInvalidArgument, "dwte");
    EXPECT_SHARDLM_ERROR(
        ops::vocab_parallel_embedding_backward(gpu(), dwte_d, dout_d, tokens_d, 0),
        ErrorKind::kInvalidArgument, "dwte");
  }
}

TEST_P(EmbeddingBackwardGpuTest, VocabParallelSumsTheShardsTokensDeterministically) {
  const DType dt = dtype();
  struct Case {
    int64_t B, T, VL, C;
    const char* tokens;  // five | same-inside | same-outside | uniform
  };
  const Case cases[] = {
      {3, 37, 41, 72, "five"},          {3, 37, 41, 72, "same-inside"},
      {3, 37, 41, 72, "same-outside"},  {3, 37, 41, 72, "uniform"},
      {8, 1024, 1251, 320, "five"},     {8, 1024, 1251, 320, "same-inside"},
      {8, 1024, 1251, 320, "uniform"},  {64, 1024, 12576, 64, "same-inside"},
  };
  uint64_t seed = 700;
  for (const Case& k : cases) {
    // The third of four shards: [start, start + VL) of V = 4 VL.
    const int64_t start = 2 * k.VL;
    const auto s = static_cast<int32_t>(start), vl = static_cast<int32_t>(k.VL);
    const std::string pattern = k.tokens;
    const OwnedTensor tokens =
        pattern == "uniform"        ? random_ints({k.B, k.T}, 4 * vl, seed++)
        : pattern == "same-inside"  ? tokens_from({s + vl / 2}, k.B, k.T, seed++)
        : pattern == "same-outside" ? tokens_from({s + vl}, k.B, k.T, seed++)
                                    // the shard's edges and the ids just outside it
                                    : tokens_from({s - 1, s, s + vl / 2, s + vl - 1, s + vl}, k.B,
                                                  k.T, seed++);
    std::vector<bool> touched(static_cast<size_t>(k.VL), false);
    for (int64_t i = 0; i < tokens.view().numel(); ++i) {
      const int64_t row = tokens.view().data<int32_t>()[i] - start;
      if (row >= 0 && row < k.VL) touched[static_cast<size_t>(row)] = true;
    }
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {k.B * k.T, k.C}, seed++), dt);
    const OwnedTensor tokens_d = to_device(tokens, DType::kI32);
    const OwnedTensor dout_d = to_device(dout, dt);
    for (DType grad_dtype : grad_dtypes(dt)) {
      SCOPED_TRACE("B=" + std::to_string(k.B) + " T=" + std::to_string(k.T) +
                   " VL=" + std::to_string(k.VL) + " C=" + std::to_string(k.C) + " tokens " +
                   pattern + ", " + dtype_name(dt) + " dout, " + dtype_name(grad_dtype) +
                   " dwte");
      const OwnedTensor prior =
          round_to(random_tensor(DType::kF32, {k.VL, k.C}, seed++), grad_dtype);
      OwnedTensor want = convert(prior, DType::kF64);
      ops::vocab_parallel_embedding_backward(cpu_, want, dout, tokens, start);
      OwnedTensor first = to_device(prior, grad_dtype), second = to_device(prior, grad_dtype);
      ops::vocab_parallel_embedding_backward(gpu(), first, dout_d, tokens_d, start);
      ops::vocab_parallel_embedding_backward(gpu(), second, dout_d, tokens_d, start);
      expect_scatter_result(gpu(), first, second, prior, want, touched, dt, max_repeats(tokens));
    }
  }
}

}  // namespace
}  // namespace shardlm
