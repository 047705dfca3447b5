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
// Tokens with more rows than the chunk length L (summed in chunks, then the chunk sums: L - 1,
// L, L + 1, 2L, 5L + 37 rows, adjacent long segments, all rows one token, half the batch one
// token, inside and outside a vocab shard) are checked element by element against an fp64 host
// sum within the worst-case rounding bound of that chunked fp32 summation, and bit-identical over
// two calls with another input's call between them (stale chunk partials would show).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "shardlm/ops/cuda/sorted_scatter_add.h"
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

// `second` (device), from a second call on the same inputs, holds the bits of `first` (host).
void expect_same_bits(const DeviceContext& gpu, const OwnedTensor& first, const Tensor& second) {
  const OwnedTensor b = to_host(gpu, second);
  ASSERT_EQ(first.view().nbytes(), b.view().nbytes());
  EXPECT_EQ(std::memcmp(first.view().raw(), b.view().raw(), b.view().nbytes()), 0)
      << "two calls on the same inputs differ: the backward is not deterministic";
}

// The dwte dtypes to test for dout in `dt`: fp32 (the master gradient) and dt itself.
std::vector<DType> grad_dtypes(DType dt) {
  return dt == DType::kF32 ? std::vector<DType>{DType::kF32}
                           : std::vector<DType>{DType::kF32, dt};
}

// One of the two embedding backwards on `ctx`: dwte += dout's rows scattered by tokens.
using Scatter = std::function<void(DeviceContext& ctx, Tensor dwte, const Tensor& dout,
                                   const Tensor& tokens)>;

// For each dwte dtype (grad_dtypes): from a random prior of `rows` table rows (the ids
// [row_start, row_start + rows)), `scatter` on the CPU into fp64 is the reference; twice on the
// GPU must give the same bits, leave rows no token maps to untouched, and match the reference.
void expect_scatter_matches(DeviceContext& cpu, DeviceContext& gpu, const Scatter& scatter,
                            const OwnedTensor& tokens, const OwnedTensor& dout, DType dt,
                            int64_t rows, int64_t row_start, const std::string& what,
                            uint64_t& seed) {
  const int64_t C = dout.view().numel() / tokens.view().numel();
  std::vector<bool> touched(static_cast<size_t>(rows), false);
  for (int64_t i = 0; i < tokens.view().numel(); ++i) {
    const int64_t r = tokens.view().data<int32_t>()[i] - row_start;
    if (r >= 0 && r < rows) touched[static_cast<size_t>(r)] = true;
  }
  const int64_t repeats = max_repeats(tokens);
  const OwnedTensor tokens_d = to_device(tokens, DType::kI32);
  const OwnedTensor dout_d = to_device(dout, dt);
  for (DType grad_dtype : grad_dtypes(dt)) {
    SCOPED_TRACE(what + ", " + dtype_name(dt) + " dout, " + dtype_name(grad_dtype) + " dwte");
    const OwnedTensor prior = round_to(random_tensor(DType::kF32, {rows, C}, seed++), grad_dtype);
    OwnedTensor want = convert(prior, DType::kF64);  // + the exact sums (CPU, fp64)
    scatter(cpu, want, dout, tokens);
    OwnedTensor first = to_device(prior, grad_dtype), second = to_device(prior, grad_dtype);
    scatter(gpu, first, dout_d, tokens_d);
    scatter(gpu, second, dout_d, tokens_d);

    const OwnedTensor a = to_host(gpu, first);
    expect_same_bits(gpu, a, second);
    const std::vector<double> got = to_vector(a.view()), p = to_vector(prior),
                              w = to_vector(want);
    std::vector<double> delta_got(got.size()), delta_want(got.size());
    int64_t changed_untouched = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      delta_got[i] = got[i] - p[i];
      delta_want[i] = w[i] - p[i];
      if (!touched[i / static_cast<size_t>(C)] && got[i] != p[i]) ++changed_untouched;
    }
    EXPECT_EQ(changed_untouched, 0) << "elements of rows no token maps to changed";
    const double tol = grad_dtype == DType::kF32
                           ? 1e-6 + 2e-7 * std::sqrt(static_cast<double>(repeats))
                           : testing::tolerance_for(grad_dtype);
    EXPECT_LT(testing::rel_error(delta_got, delta_want), tol)
        << "up to " << repeats << " rows per token";
  }
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
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {k.B, k.T, k.C}, seed++), dt);
    expect_scatter_matches(
        cpu_, gpu(),
        [](DeviceContext& ctx, Tensor dwte, const Tensor& d, const Tensor& t) {
          ops::embedding_backward(ctx, dwte, Tensor(), d, t);
        },
        tokens, dout, dt, k.V, 0,
        "B=" + std::to_string(k.B) + " T=" + std::to_string(k.T) + " V=" + std::to_string(k.V) +
            " C=" + std::to_string(k.C) + " tokens " + pattern,
        seed);
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
    const OwnedTensor dout = round_to(random_tensor(DType::kF32, {k.B * k.T, k.C}, seed++), dt);
    expect_scatter_matches(
        cpu_, gpu(),
        [start](DeviceContext& ctx, Tensor dwte, const Tensor& d, const Tensor& t) {
          ops::vocab_parallel_embedding_backward(ctx, dwte, d, t, start);
        },
        tokens, dout, dt, k.VL, start,
        "B=" + std::to_string(k.B) + " T=" + std::to_string(k.T) + " VL=" + std::to_string(k.VL) +
            " C=" + std::to_string(k.C) + " tokens " + pattern,
        seed);
  }
}

// ---- tokens with more rows than the chunk length L ---------------------------------------------

constexpr int64_t kL = ops::cuda::kSortedScatterAddChunkRows;

struct Heavy {
  int32_t id;
  int64_t rows;
};

// N ids: each heavy id exactly `rows` times, the rest uniform in [0, V) without the heavy ids,
// shuffled (deterministic per seed), as [1, N].
OwnedTensor heavy_tokens(int64_t N, int64_t V, const std::vector<Heavy>& heavy, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  for (const Heavy& h : heavy) ids.insert(ids.end(), static_cast<size_t>(h.rows), h.id);
  while (static_cast<int64_t>(ids.size()) < N) {
    const auto id = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
    if (std::none_of(heavy.begin(), heavy.end(), [&](const Heavy& h) { return h.id == id; }))
      ids.push_back(id);
  }
  for (size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[rng() % (i + 1)]);
  OwnedTensor t = OwnedTensor::empty(DType::kI32, {1, N});
  std::copy(ids.begin(), ids.end(), t.view().data<int32_t>());
  return t;
}

// prior + the exact sums of each table row's rows (fp64, host), and how far the GPU's result may
// be from it. Table row r with k rows: each row passes through at most
// d = min(k, L) + ceil(k / L) + 1 fp32 additions (its chunk, the chunk sums, the add into dwte;
// sorted_scatter_add.h), so the fp32 result is within gamma_d (|prior| + sum |rows|) of the
// exact one, gamma_d = d u / (1 - d u), u = 2^-24 (Higham, Accuracy and Stability of Numerical
// Algorithms, 4.2: any summation tree, by each term's depth). Rounding it to a 16-bit dwte adds
// u_G (|exact| + that error): u_G = 2^-8 (bf16) or 2^-11 (fp16, plus 2^-25, half its subnormal
// spacing). Rows no token maps to (k = 0) must keep the prior's bits.
struct ChunkedReference {
  std::vector<double> want, bound;  // [R, C]
  std::vector<int64_t> count;       // [R] rows per table row
};

ChunkedReference chunked_reference(const Tensor& prior, const Tensor& dout, const Tensor& tokens,
                                   int64_t row_start, DType grad_dtype) {
  const int64_t R = prior.size(0), C = prior.numel() / R, N = tokens.numel();
  ChunkedReference ref{to_vector(prior), {}, std::vector<int64_t>(static_cast<size_t>(R), 0)};
  std::vector<double> magnitude(ref.want.size());
  for (size_t i = 0; i < magnitude.size(); ++i) magnitude[i] = std::fabs(ref.want[i]);
  const std::vector<double> rows = to_vector(dout);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = tokens.data<int32_t>()[n] - row_start;
    if (r < 0 || r >= R) continue;
    ++ref.count[static_cast<size_t>(r)];
    for (int64_t c = 0; c < C; ++c) {
      const double x = rows[static_cast<size_t>(n * C + c)];
      ref.want[static_cast<size_t>(r * C + c)] += x;
      magnitude[static_cast<size_t>(r * C + c)] += std::fabs(x);
    }
  }
  const double u = std::ldexp(1.0, -24);
  const double u_g = grad_dtype == DType::kBF16  ? std::ldexp(1.0, -8)
                     : grad_dtype == DType::kF16 ? std::ldexp(1.0, -11)
                                                 : 0.0;
  const double tiny = grad_dtype == DType::kF16 ? std::ldexp(1.0, -25) : 0.0;
  ref.bound.resize(ref.want.size());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t k = ref.count[static_cast<size_t>(r)];
    const auto d = static_cast<double>(std::min(k, kL) + (k + kL - 1) / kL + 1);
    const double gamma = d * u / (1 - d * u);
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(r * C + c);
      const double e = gamma * magnitude[i];
      ref.bound[i] = k == 0 ? 0.0 : e + u_g * (std::fabs(ref.want[i]) + e) + tiny;
    }
  }
  return ref;
}

// prior + each table row's rows summed in fp32 in sorted_scatter_add.h's order: a row's k rows
// in row order; k <= L: summed from 0; else each L-row chunk (the last one the rest) summed from
// 0, then the chunk sums added from 0; the result added to prior once. fp32 prior only.
OwnedTensor documented_order_sums(const Tensor& prior, const Tensor& dout, const Tensor& tokens,
                                  int64_t row_start) {
  const int64_t R = prior.size(0), C = prior.numel() / R, N = tokens.numel();
  std::vector<std::vector<int64_t>> rows_of(static_cast<size_t>(R));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = tokens.data<int32_t>()[n] - row_start;
    if (r >= 0 && r < R) rows_of[static_cast<size_t>(r)].push_back(n);
  }
  const std::vector<double> x = to_vector(dout);  // exact: dout's values are fp32-representable
  OwnedTensor out = testing::clone(prior);
  float* o = out.view().data<float>();
  for (int64_t r = 0; r < R; ++r) {
    const std::vector<int64_t>& ns = rows_of[static_cast<size_t>(r)];
    if (ns.empty()) continue;
    const auto k = static_cast<int64_t>(ns.size());
    for (int64_t c = 0; c < C; ++c) {
      auto chunk_sum = [&](int64_t begin, int64_t end) {
        float sum = 0.0f;
        for (int64_t j = begin; j < end; ++j)
          sum += static_cast<float>(x[static_cast<size_t>(ns[static_cast<size_t>(j)] * C + c)]);
        return sum;
      };
      float sum = 0.0f;
      if (k <= kL) {
        sum = chunk_sum(0, k);
      } else {
        for (int64_t b = 0; b < k; b += kL) sum += chunk_sum(b, std::min(k, b + kL));
      }
      o[r * C + c] += sum;
    }
  }
  return out;
}

struct ChunkCase {
  const char* what;
  int64_t N, V, C;
  std::vector<Heavy> heavy;
  // 0: embedding_backward over V rows; else vocab_parallel_embedding_backward on the third of
  // four shards, [2 shard_rows, 3 shard_rows) of V = 4 shard_rows.
  int64_t shard_rows;
};

// Runs the case on the GPU (dout in dt, dwte in grad_dtype) twice, with a call on other rows,
// all of one token, between them (it rewrites the chunk partials: a read of one the second call
// did not write would change its bits), and checks the first against chunked_reference.
void expect_chunked_sums(DeviceContext& gpu, const ChunkCase& k, DType dt, DType grad_dtype,
                         uint64_t seed) {
  const int64_t R = k.shard_rows == 0 ? k.V : k.shard_rows;
  const int64_t row_start = k.shard_rows == 0 ? 0 : 2 * k.shard_rows;
  const OwnedTensor tokens = heavy_tokens(k.N, k.V, k.heavy, seed);
  const OwnedTensor dout = round_to(random_tensor(DType::kF32, {1, k.N, k.C}, seed + 1), dt);
  const OwnedTensor prior = round_to(random_tensor(DType::kF32, {R, k.C}, seed + 2), grad_dtype);
  const ChunkedReference ref = chunked_reference(prior, dout, tokens, row_start, grad_dtype);
  auto scatter = [&](Tensor dwte, const Tensor& dout_d, const Tensor& tokens_d) {
    if (k.shard_rows == 0)
      ops::embedding_backward(gpu, dwte, Tensor(), dout_d, tokens_d);
    else
      ops::vocab_parallel_embedding_backward(gpu, dwte, dout_d, tokens_d, row_start);
  };
  const OwnedTensor tokens_d = to_device(tokens, DType::kI32);
  const OwnedTensor dout_d = to_device(dout, dt);
  OwnedTensor one_token = OwnedTensor::empty(DType::kI32, {1, k.N});  // the call between
  std::fill_n(one_token.view().data<int32_t>(), k.N, static_cast<int32_t>(row_start));
  const OwnedTensor one_token_d = to_device(one_token, DType::kI32);
  const OwnedTensor other_dout_d =
      to_device(random_tensor(DType::kF32, {1, k.N, k.C}, seed + 3), dt);
  OwnedTensor first = to_device(prior, grad_dtype), second = to_device(prior, grad_dtype),
              other = to_device(prior, grad_dtype);
  scatter(first, dout_d, tokens_d);
  scatter(other, other_dout_d, one_token_d);
  scatter(second, dout_d, tokens_d);
  const OwnedTensor got_host = to_host(gpu, first);
  expect_same_bits(gpu, got_host, second);

  const std::vector<double> got = to_vector(got_host.view()), p = to_vector(prior);
  int64_t failures = 0;
  double worst = 0;  // the largest |got - want| / bound over touched elements
  std::string first_failure;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool untouched = ref.count[i / static_cast<size_t>(k.C)] == 0;
    const double err = std::fabs(got[i] - ref.want[i]);
    const bool ok = untouched ? got[i] == p[i] : err <= ref.bound[i];  // false for NaN
    if (!untouched && ref.bound[i] > 0) worst = std::max(worst, err / ref.bound[i]);
    if (!ok && failures++ == 0)
      first_failure = "[" + std::to_string(i / static_cast<size_t>(k.C)) + ", " +
                      std::to_string(i % static_cast<size_t>(k.C)) + "]: gpu " +
                      std::to_string(got[i]) + ", exact " + std::to_string(ref.want[i]) +
                      ", bound " + std::to_string(ref.bound[i]);
  }
  EXPECT_EQ(failures, 0) << failures << " elements outside the chunked fp32 summation's bound "
                         << "(or untouched rows changed); first " << first_failure
                         << "; largest error / bound " << worst;
  // Into an fp32 dwte the header's order is exact to emulate (the kernels only add, in fp32):
  // the same bits, or the order changed.
  if (grad_dtype == DType::kF32)
    expect_same_bits(gpu, documented_order_sums(prior, dout, tokens, row_start), first);
}

TEST_P(EmbeddingBackwardGpuTest, TokensWithMoreRowsThanTheChunkLengthSumInChunks) {
  const DType dt = dtype();
  const int64_t L = kL;
  const ChunkCase cases[] = {
      {"L - 1 rows", L + 200, 97, 300, {{40, L - 1}}, 0},
      {"exactly L rows", L + 200, 97, 300, {{40, L}}, 0},
      {"L + 1 rows", 2 * L, 97, 300, {{40, L + 1}}, 0},
      {"2L rows, the first id", 3 * L + 5, 97, 300, {{0, 2 * L}}, 0},
      {"5L + 37 rows, the last id", 6 * L + 100, 97, 300, {{96, 5 * L + 37}}, 0},
      {"adjacent long segments", 8 * L + 300, 97, 300,
       {{10, L + 10}, {11, 3 * L + 5}, {12, 2 * L}, {13, L + 1}}, 0},
      {"every row one token (N = 16384, C = 2048)", 16384, 50, 2048, {{7, 16384}}, 0},
      {"half the batch one token (EOD)", 16384, 50304, 512, {{50256, 8192}}, 0},
      // Vocab-parallel: the shard is [2000, 3000) of V = 4000.
      {"shard: heavy inside", 4 * L, 4000, 300, {{2500, 3 * L + 17}}, 1000},
      {"shard: heavy on its first and last ids", 5 * L, 4000, 300,
       {{2000, 2 * L + 3}, {2999, L + 1}}, 1000},
      {"shard: heavy just outside, below and above", 6 * L, 4000, 300,
       {{1999, 3 * L}, {3000, 2 * L + 7}}, 1000},
      {"shard: heavy inside and outside", 8 * L, 4000, 300, {{2500, 2 * L + 1}, {3000, 5 * L}},
       1000},
  };
  uint64_t seed = 800;
  for (const ChunkCase& k : cases)
    for (DType grad_dtype : grad_dtypes(dt)) {
      SCOPED_TRACE(std::string(k.what) + ": N=" + std::to_string(k.N) + " C=" +
                   std::to_string(k.C) + ", " + dtype_name(dt) + " dout, " +
                   dtype_name(grad_dtype) + " dwte, L=" + std::to_string(L));
      expect_chunked_sums(gpu(), k, dt, grad_dtype, seed);
      seed += 4;
    }
}

}  // namespace
}  // namespace shardlm
