// ops_bench — times the CUDA backend's heaviest ops on random bf16 data and prints achieved
// TFLOP/s (matrix-bound ops) and GB/s (memory-bound ops) against the device's measured copy
// bandwidth.
//
// Build (CUDA build tree):  cmake --build build-cuda --target ops_bench
// Run:                      ./build-cuda/ops_bench [--quick | --embedding | --context-parallel | --fp8]
//
// FLOP conventions (stated so numbers compare with FlashAttention / PyTorch SDPA reports):
//   attention forward, causal = 4 * B * NH * T^2 * HS / 2;  backward = 2.5 x forward
//   linear forward = 2 * N * IC * OC; backward = 2 x forward (din and dweight GEMMs)
// Bytes (memory-bound ops) count each input read once and each output written once.
// Each timing: 3 warm-up runs, then the median of 20 runs measured with CUDA events on the
// op stream.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "shardlm/model/fp8_linear.h"
#include "shardlm/ops/cuda/cuda_context.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/philox.h"
#include "shardlm/tensor/tensor.h"

namespace {

using shardlm::DeviceContext;
using shardlm::DType;
using shardlm::OwnedTensor;
using shardlm::Shape;
using shardlm::Tensor;
namespace ops = shardlm::ops;
namespace model = shardlm::model;
using shardlm::TensorAllocator;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

// Device tensor of normal(0, stddev) values in `dtype`, drawn on the device (drawing hundreds of
// millions of values on one host thread took longer than the benchmarks themselves).
OwnedTensor random_device(DeviceContext& ctx, DType dtype, const Shape& shape, uint64_t seed,
                          double stddev = 1.0) {
  OwnedTensor staging = OwnedTensor::empty(DType::kF32, shape, ctx.device());
  ops::init_normal(ctx, staging, shardlm::init_normal_key(seed, "bench"), stddev);
  OwnedTensor dev = OwnedTensor::empty(dtype, shape, ctx.device());
  ops::copy(ctx, dev, staging);  // converts on the device
  ops::cuda::synchronize(ctx);
  return dev;
}

// Median milliseconds of fn() over `reps` runs on ctx's stream.
double time_ms(DeviceContext& ctx, const std::function<void()>& fn, int reps = 20) {
  cudaStream_t stream = ops::cuda::cuda_state(ctx).stream();
  for (int i = 0; i < 3; ++i) fn();
  ops::cuda::synchronize(ctx);
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(start, stream), "record");
    fn();
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    check(cudaEventElapsedTime(&ms[i], start, stop), "elapsed");
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

void bench_copy(DeviceContext& ctx) {
  const int64_t n = int64_t{1} << 28;  // 512 MiB of bf16
  OwnedTensor a = random_device(ctx, DType::kBF16, {n / 64, 64}, 1);
  OwnedTensor b = OwnedTensor::empty(DType::kBF16, {n / 64, 64}, ctx.device());
  const double ms = time_ms(ctx, [&] { ops::copy(ctx, b, a); });
  std::printf("%-44s %9.3f ms %9.1f GB/s (read+write; the bandwidth ceiling)\n",
              "copy bf16 256M elements", ms, 2.0 * n * 2 / ms / 1e6);
}

// Both attention implementations on the same data: ShardLM's kernels ("own") and cuDNN's fused
// flash attention ("cudnn"); lse in fp32 as the model keeps it.
void bench_attention(DeviceContext& ctx, int64_t T, int64_t HS) {
  const int64_t tokens = 16384, hidden = 2048;
  const int64_t B = tokens / T, NH = hidden / HS, G = NH;  // MHA
  const ops::AttentionShape shape{NH, G, HS};
  const int64_t W = G * (NH / G + 2) * HS;
  OwnedTensor qkv = random_device(ctx, DType::kBF16, {B, T, W}, 2);
  OwnedTensor out = OwnedTensor::empty(DType::kBF16, {B, T, NH * HS}, ctx.device());
  OwnedTensor lse = OwnedTensor::empty(DType::kF32, {B, NH, T}, ctx.device());
  OwnedTensor dout = random_device(ctx, DType::kBF16, {B, T, NH * HS}, 3);
  OwnedTensor dqkv = OwnedTensor::empty(DType::kBF16, {B, T, W}, ctx.device());
  const double flops_fwd = 4.0 * B * NH * double(T) * T * HS / 2;
  auto& state = ops::cuda::cuda_state(ctx);
  for (const auto kernels : {ops::cuda::AttentionKernels::kOwn, ops::cuda::AttentionKernels::kCudnn}) {
    state.set_attention_kernels(kernels);
    const char* who = ops::cuda::attention_kernels_name(kernels);
    char name[96];
    try {
      const double fwd =
          time_ms(ctx, [&] { ops::attention_forward(ctx, out, lse, qkv, shape, 0, {}); });
      const double bwd = time_ms(ctx, [&] {
        ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, 0, {});
      });
      std::snprintf(name, sizeof(name), "attention %s fwd B=%ld T=%ld NH=%ld HS=%ld", who,
                    (long)B, (long)T, (long)NH, (long)HS);
      std::printf("%-50s %9.3f ms %9.1f TFLOP/s\n", name, fwd, flops_fwd / fwd / 1e9);
      std::snprintf(name, sizeof(name), "attention %s bwd B=%ld T=%ld NH=%ld HS=%ld", who,
                    (long)B, (long)T, (long)NH, (long)HS);
      std::printf("%-50s %9.3f ms %9.1f TFLOP/s\n", name, bwd, 2.5 * flops_fwd / bwd / 1e9);
    } catch (const std::exception& e) {
      std::printf("attention %s T=%ld HS=%ld: not run (%s)\n", who, (long)T, (long)HS, e.what());
    }
  }
  state.set_attention_kernels(ops::cuda::AttentionKernels::kAuto);
}

void bench_linear(DeviceContext& ctx, int64_t N, int64_t IC, int64_t OC) {
  OwnedTensor in = random_device(ctx, DType::kBF16, {N, IC}, 4);
  OwnedTensor w = random_device(ctx, DType::kBF16, {OC, IC}, 5, 0.02);
  OwnedTensor bias = random_device(ctx, DType::kBF16, {OC}, 6);
  OwnedTensor out = OwnedTensor::empty(DType::kBF16, {N, OC}, ctx.device());
  OwnedTensor dout = random_device(ctx, DType::kBF16, {N, OC}, 7);
  OwnedTensor din = OwnedTensor::empty(DType::kBF16, {N, IC}, ctx.device());
  OwnedTensor dw = random_device(ctx, DType::kBF16, {OC, IC}, 8);
  OwnedTensor db = random_device(ctx, DType::kBF16, {OC}, 9);
  const double flops = 2.0 * N * IC * OC;
  const double fwd = time_ms(ctx, [&] { ops::linear_forward(ctx, out, in, w, bias); });
  const double bwd = time_ms(ctx, [&] { ops::linear_backward(ctx, din, dw, db, dout, in, w); });
  char name[96];
  std::snprintf(name, sizeof(name), "linear fwd+bias N=%ld IC=%ld OC=%ld", (long)N, (long)IC,
                (long)OC);
  std::printf("%-44s %9.3f ms %9.1f TFLOP/s\n", name, fwd, flops / fwd / 1e9);
  std::snprintf(name, sizeof(name), "linear bwd (din,dW,db) N=%ld IC=%ld OC=%ld", (long)N,
                (long)IC, (long)OC);
  std::printf("%-44s %9.3f ms %9.1f TFLOP/s\n", name, bwd, 2 * flops / bwd / 1e9);
}

// The fp8 linear (model/fp8_linear.h) against the bf16 one at the same shape: forward and
// backward with quantisation included (amaxes, scales, codes and transposed codes), and the bare
// fp8 GEMM (forward form) alone. Backward writes an fp32 weight gradient, as gradient-
// accumulation fusion does.
void bench_fp8_linear(DeviceContext& ctx, int64_t N, int64_t IC, int64_t OC) {
  struct Allocator : TensorAllocator {
    DeviceContext& ctx;
    std::vector<OwnedTensor> owned;
    explicit Allocator(DeviceContext& c) : ctx(c) {}
    Tensor allocate(DType dtype, const Shape& shape) override {
      owned.push_back(OwnedTensor::empty(dtype, shape, ctx.device()));
      return owned.back().view();
    }
  } alloc(ctx);
  const model::Fp8Recipe recipe{model::Fp8Format::kHybrid, 0};
  const model::Fp8Workspace ws =
      model::Fp8Workspace::allocate(alloc, recipe, N, IC, OC, IC * OC);
  const model::Fp8Linear lin{recipe, {}};
  OwnedTensor in = random_device(ctx, DType::kBF16, {N, IC}, 4);
  OwnedTensor w = random_device(ctx, DType::kBF16, {OC, IC}, 5, 0.02);
  OwnedTensor bias = random_device(ctx, DType::kBF16, {OC}, 6);
  OwnedTensor out = OwnedTensor::empty(DType::kBF16, {N, OC}, ctx.device());
  OwnedTensor dout = random_device(ctx, DType::kBF16, {N, OC}, 7, 1e-3);
  OwnedTensor din = OwnedTensor::empty(DType::kBF16, {N, IC}, ctx.device());
  OwnedTensor dw = OwnedTensor::zeros(DType::kF32, {OC, IC}, ctx.device());
  const double flops = 2.0 * N * IC * OC;
  const double fwd = time_ms(ctx, [&] { lin.forward(ctx, ws, out, in, w, bias); });
  const double bwd = time_ms(ctx, [&] { lin.backward(ctx, ws, din, dw, true, dout, in, w); });
  const Tensor xq = ws.x.flat_view(0, Shape({N, IC})), wq = ws.w.flat_view(0, Shape({OC, IC}));
  const double gemm = time_ms(ctx, [&] {
    ops::fp8_gemm(ctx, out, xq, ws.scale_inv_of(0), wq, ws.scale_inv_of(1), bias,
                  false);
  });
  const double quant = time_ms(ctx, [&] {
    ops::fp8_quantize(ctx, xq, Tensor(), in, ws.scale.slice(0, 1));
  });
  char name[96];
  std::snprintf(name, sizeof(name), "fp8 linear fwd+bias N=%ld IC=%ld OC=%ld", (long)N,
                (long)IC, (long)OC);
  std::printf("%-44s %9.3f ms %9.1f TFLOP/s\n", name, fwd, flops / fwd / 1e9);
  std::snprintf(name, sizeof(name), "fp8 linear bwd (din,dW fp32) N=%ld IC=%ld OC=%ld", (long)N,
                (long)IC, (long)OC);
  std::printf("%-44s %9.3f ms %9.1f TFLOP/s\n", name, bwd, 2 * flops / bwd / 1e9);
  std::snprintf(name, sizeof(name), "fp8 GEMM alone (fwd form) N=%ld IC=%ld OC=%ld", (long)N,
                (long)IC, (long)OC);
  std::printf("%-44s %9.3f ms %9.1f TFLOP/s\n", name, gemm, flops / gemm / 1e9);
  std::snprintf(name, sizeof(name), "fp8 quantize x alone N=%ld IC=%ld", (long)N, (long)IC);
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, quant, 3.0 * N * IC / quant / 1e6);
}

void bench_layernorm(DeviceContext& ctx, int64_t N, int64_t C) {
  OwnedTensor in = random_device(ctx, DType::kBF16, {N, C}, 10);
  OwnedTensor w = random_device(ctx, DType::kBF16, {C}, 11);
  OwnedTensor b = random_device(ctx, DType::kBF16, {C}, 12);
  OwnedTensor out = OwnedTensor::empty(DType::kBF16, {N, C}, ctx.device());
  OwnedTensor mean = OwnedTensor::empty(DType::kBF16, {N}, ctx.device());
  OwnedTensor rstd = OwnedTensor::empty(DType::kBF16, {N}, ctx.device());
  OwnedTensor dout = random_device(ctx, DType::kBF16, {N, C}, 13);
  OwnedTensor din = OwnedTensor::empty(DType::kBF16, {N, C}, ctx.device());
  OwnedTensor dw = random_device(ctx, DType::kBF16, {C}, 14);
  OwnedTensor db = random_device(ctx, DType::kBF16, {C}, 15);
  const double fwd = time_ms(ctx, [&] { ops::layernorm_forward(ctx, out, mean, rstd, in, w, b, 1e-5); });
  const double bwd =
      time_ms(ctx, [&] { ops::layernorm_backward(ctx, din, dw, db, dout, in, w, mean, rstd); });
  char name[96];
  std::snprintf(name, sizeof(name), "layernorm fwd N=%ld C=%ld", (long)N, (long)C);
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, fwd, 2.0 * N * C * 2 / fwd / 1e6);
  std::snprintf(name, sizeof(name), "layernorm bwd N=%ld C=%ld", (long)N, (long)C);
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, bwd, 3.0 * N * C * 2 / bwd / 1e6);
}

// RoPE in place on the fused QKV activation, as the model runs it (rotate-half, R = HS). Bytes:
// the q and k heads read and written once (v heads are not touched); the table is built once.
void bench_rope(DeviceContext& ctx, int64_t B, int64_t T, int64_t NH, int64_t G, int64_t HS) {
  const ops::AttentionShape shape{NH, G, HS};
  const int64_t W = G * (NH / G + 2) * HS;
  OwnedTensor qkv = random_device(ctx, DType::kBF16, {B, T, W}, 16);  // [B, T, G*(NH/G+2)*HS]
  OwnedTensor table = OwnedTensor::empty(DType::kF32, {T, HS / 2, 2}, ctx.device());  // [T, R/2, 2]
  const double table_ms = time_ms(ctx, [&] { ops::rope_cos_sin(ctx, table, {}); });
  const double fwd = time_ms(ctx, [&] { ops::rope_forward(ctx, qkv, qkv, table, shape, false); });
  const double bwd = time_ms(ctx, [&] { ops::rope_backward(ctx, qkv, qkv, table, shape, false); });
  const double bytes = 2.0 * B * T * G * (NH / G + 1) * HS * 2;
  char name[96];
  std::snprintf(name, sizeof(name), "rope table T=%ld R/2=%ld (fp32)", (long)T, (long)(HS / 2));
  std::printf("%-44s %9.3f ms\n", name, table_ms);
  std::snprintf(name, sizeof(name), "rope fwd in place B=%ld T=%ld NH=%ld G=%ld HS=%ld", (long)B,
                (long)T, (long)NH, (long)G, (long)HS);
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, fwd, bytes / fwd / 1e6);
  std::snprintf(name, sizeof(name), "rope bwd in place B=%ld T=%ld NH=%ld G=%ld HS=%ld", (long)B,
                (long)T, (long)NH, (long)G, (long)HS);
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, bwd, bytes / bwd / 1e6);
}

// Word-embedding gradient (sorted scatter-add: bf16 dout into the fp32 master gradient, V =
// 50304) for uniform random tokens and for every row one token (EOD / padding: the case that
// once summed all N rows in one serial loop per column). Bytes: dout read once, each touched
// gradient row read and written once (fp32); the sort's N keys are left out.
void bench_embedding_backward(DeviceContext& ctx, int64_t N, int64_t C, bool one_token) {
  const int64_t V = 50304;
  std::vector<int32_t> ids(static_cast<size_t>(N));
  std::vector<char> seen(static_cast<size_t>(V), 0);
  int64_t distinct = 0;
  uint64_t x = 12345;
  for (int32_t& id : ids) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;  // LCG: fixed tokens per run
    id = one_token ? 50256 : static_cast<int32_t>((x >> 33) % V);
    distinct += seen[static_cast<size_t>(id)] == 0;
    seen[static_cast<size_t>(id)] = 1;
  }
  OwnedTensor tokens = OwnedTensor::empty(DType::kI32, {1, N}, ctx.device());
  check(cudaMemcpy(tokens.view().raw(), ids.data(), ids.size() * sizeof(int32_t),
                   cudaMemcpyHostToDevice),
        "tokens H2D");
  check(cudaDeviceSynchronize(), "sync");  // the op stream does not wait for the default one
  OwnedTensor dout = random_device(ctx, DType::kBF16, {1, N, C}, 24);
  OwnedTensor dwte = OwnedTensor::zeros(DType::kF32, {V, C}, ctx.device());
  const double ms =
      time_ms(ctx, [&] { ops::embedding_backward(ctx, dwte, Tensor(), dout, tokens); });
  char name[96];
  std::snprintf(name, sizeof(name), "embedding bwd %s N=%ld C=%ld",
                one_token ? "one token" : "uniform", (long)N, (long)C);
  const double bytes = 2.0 * N * C + 2.0 * 4 * distinct * C;
  std::printf("%-44s %9.3f ms %9.1f GB/s\n", name, ms, bytes / ms / 1e6);
}

// How much of the GEMM rate the heuristic's first choice leaves on the table: the 1.3B layer's
// GEMMs as linear.cu issues them (column-major: forward TN, input gradient NN, weight gradient
// NT with beta = 1), timed with cuBLASLt's top-1 algorithm and with the fastest of its top 16.
void bench_gemm_algorithms(DeviceContext& ctx) {
  struct G {
    const char* name;
    bool ta, tb;
    int64_t m, n, k;
    float beta;
  };
  const int64_t N = 16384;
  const G gemms[] = {
      {"fwd qkv", true, false, 6144, N, 2048, 0}, {"fwd proj", true, false, 2048, N, 2048, 0},
      {"fwd fc1", true, false, 8192, N, 2048, 0}, {"fwd fc2", true, false, 2048, N, 8192, 0},
      {"din qkv", false, false, 2048, N, 6144, 0}, {"din proj", false, false, 2048, N, 2048, 0},
      {"din fc1", false, false, 2048, N, 8192, 0}, {"din fc2", false, false, 8192, N, 2048, 0},
      {"dW qkv", false, true, 2048, 6144, N, 1}, {"dW proj", false, true, 2048, 2048, N, 1},
      {"dW fc1", false, true, 2048, 8192, N, 1}, {"dW fc2", false, true, 8192, 2048, N, 1},
  };
  const auto& st = ops::cuda::cuda_state(ctx);
  OwnedTensor A = random_device(ctx, DType::kBF16, {int64_t{8192} * N}, 21, 0.05);
  OwnedTensor B = random_device(ctx, DType::kBF16, {int64_t{8192} * N}, 22, 0.05);
  OwnedTensor D = random_device(ctx, DType::kBF16, {int64_t{8192} * N}, 23, 0.05);
  double top1_total = 0, best_total = 0, flops_total = 0;
  for (const G& g : gemms) {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t ta = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    const int64_t lda = g.ta ? g.k : g.m, ldb = g.tb ? g.n : g.k;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, g.ta ? g.k : g.m, g.ta ? g.m : g.k, lda);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, g.tb ? g.n : g.k, g.tb ? g.k : g.n, ldb);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, g.m, g.n, g.m);
    cublasLtMatmulPreferenceCreate(&pref);
    const uint64_t ws = ops::cuda::CudaBackendState::kCublasWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof(ws));
    cublasLtMatmulHeuristicResult_t results[16];
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(st.cublaslt(), desc, la, lb, ld, ld, pref, 16, results, &found);
    const float alpha = 1.0f;
    double top1 = 0, best = 1e30;
    int best_i = -1;
    for (int i = 0; i < found; ++i) {
      const double ms = time_ms(ctx, [&] {
        cublasLtMatmul(st.cublaslt(), desc, &alpha, A.view().raw(), la, B.view().raw(), lb,
                       &g.beta, D.view().raw(), ld, D.view().raw(), ld, &results[i].algo,
                       st.cublas_workspace(), ws, st.stream());
      }, 10);
      if (i == 0) top1 = ms;
      if (ms < best) best = ms, best_i = i;
    }
    const double flops = 2.0 * g.m * g.n * g.k;
    top1_total += top1;
    best_total += best;
    flops_total += flops;
    std::printf("gemm %-9s m=%5ld n=%5ld k=%5ld: top-1 %7.1f TFLOP/s, best of %2d (#%d) %7.1f\n",
                g.name, (long)g.m, (long)g.n, (long)g.k, flops / top1 / 1e9, found, best_i,
                flops / best / 1e9);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
  }
  std::printf("gemm layer total: top-1 %.3f ms (%.1f TFLOP/s), best %.3f ms (%.1f TFLOP/s)\n",
              top1_total, flops_total / top1_total / 1e9, best_total,
              flops_total / best_total / 1e9);
}

}  // namespace

// Context parallelism's attention work per rank (model/context_parallel.h): one sequence of T
// tokens; the whole-sequence forward + backward on one GPU, then, for CP ranks, each rank's two
// chunks (positions r and 2·CP−1−r) against the gathered keys, the calls that rank would make.
// Equal per-rank times near 1/CP of the whole are what the load-balanced split promises.
void bench_context_parallel_attention(DeviceContext& ctx, int64_t T, int64_t NH, int64_t HS) {
  const int64_t B = 1, G = NH, W = G * (NH / G + 2) * HS;
  const ops::AttentionShape shape{NH, G, HS};
  OwnedTensor qkv = random_device(ctx, DType::kBF16, {B, T, W}, 2);
  OwnedTensor out = OwnedTensor::empty(DType::kBF16, {B, T, NH * HS}, ctx.device());
  OwnedTensor lse = OwnedTensor::empty(DType::kF32, {B, NH, T}, ctx.device());
  OwnedTensor dout = random_device(ctx, DType::kBF16, {B, T, NH * HS}, 3);
  OwnedTensor dqkv = OwnedTensor::empty(DType::kBF16, {B, T, W}, ctx.device());
  const double whole = time_ms(ctx, [&] {
    ops::attention_forward(ctx, out, lse, qkv, shape, 0, {});
    ops::attention_backward(ctx, dqkv, dout, qkv, out, lse, shape, 0, {});
  });
  std::printf("attention fwd+bwd B=1 T=%ld NH=%ld HS=%ld, whole sequence: %9.3f ms\n", (long)T,
              (long)NH, (long)HS, whole);
  for (int64_t cp : {2, 4, 8}) {
    const int64_t TL = T / cp, c = TL / 2;
    OwnedTensor q_src = random_device(ctx, DType::kBF16, {B, TL, W}, 4);
    OwnedTensor o = OwnedTensor::empty(DType::kBF16, {B, TL, NH * HS}, ctx.device());
    OwnedTensor l = OwnedTensor::empty(DType::kF32, {B, NH, TL}, ctx.device());
    OwnedTensor d_o = random_device(ctx, DType::kBF16, {B, TL, NH * HS}, 5);
    OwnedTensor dq = OwnedTensor::empty(DType::kBF16, {B, TL, W}, ctx.device());
    std::printf("  CP %ld, ms per rank (fwd+bwd of its 2 chunks):", (long)cp);
    double slowest = 0;
    for (int64_t r = 0; r < cp; ++r) {
      const ops::AttentionChunk early{0, c, r * c}, late{c, c, (2 * cp - 1 - r) * c};
      const double ms = time_ms(ctx, [&] {
        for (const ops::AttentionChunk& k : {early, late})
          ops::attention_chunk_forward(ctx, o, l, q_src, qkv, shape, k, 0, {});
        for (const ops::AttentionChunk& k : {late, early})
          ops::attention_chunk_backward(ctx, dq, dqkv, d_o, q_src, qkv, o, l, shape, k, 0, {});
      });
      slowest = std::max(slowest, ms);
      std::printf(" %.3f", ms);
    }
    std::printf(" | slowest = %.1f%% of the whole (1/CP = %.1f%%)\n", 100 * slowest / whole,
                100.0 / cp);
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool embedding_only = argc > 1 && std::strcmp(argv[1], "--embedding") == 0;
  const bool context_parallel = argc > 1 && std::strcmp(argv[1], "--context-parallel") == 0;
  const bool fp8 = argc > 1 && std::strcmp(argv[1], "--fp8") == 0;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines survive a timeout kill when redirected
  try {
    DeviceContext ctx(shardlm::Device::cuda(0));
    ops::cuda::init_cuda_backend(ctx);
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "props");
    std::printf("device: %s, %d SMs; all tensors bf16 (embedding bwd: fp32 dwte)\n", prop.name,
                prop.multiProcessorCount);
    if (context_parallel) {
      for (int64_t T : {16384, 65536}) bench_context_parallel_attention(ctx, T, 16, 128);
      return 0;
    }
    if (fp8) {
      for (const auto& [IC, OC] : {std::pair<int64_t, int64_t>{2048, 8192}, {8192, 2048},
                                   {2048, 6144}, {2048, 2048}}) {
        bench_linear(ctx, 16384, IC, OC);
        bench_fp8_linear(ctx, 16384, IC, OC);
      }
      return 0;
    }
    if (embedding_only) {
      bench_embedding_backward(ctx, 16384, 2048, /*one_token=*/false);
      bench_embedding_backward(ctx, 16384, 2048, /*one_token=*/true);
      return 0;
    }
    bench_copy(ctx);
    bench_gemm_algorithms(ctx);
    for (int64_t T : quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 2048, 4096})
      for (int64_t HS : {64, 128}) bench_attention(ctx, T, HS);
    bench_linear(ctx, 16384, 2048, 8192);
    bench_linear(ctx, 16384, 2048, 6144);
    bench_layernorm(ctx, 16384, 2048);
    bench_layernorm(ctx, 16384, 1024);
    bench_rope(ctx, 8, 2048, 32, 8, 64);
    bench_embedding_backward(ctx, 16384, 2048, /*one_token=*/false);
    bench_embedding_backward(ctx, 16384, 2048, /*one_token=*/true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ops_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
