#include "shardlm/model/fp8_linear.h"

#include <string>

#include "shardlm/base/check.h"
#include "shardlm/ops/ops.h"

namespace shardlm::model {
namespace {

// A [rows, cols] view at the start of a flat workspace buffer.
Tensor codes(const Tensor& buffer, int64_t rows, int64_t cols, const char* what) {
  SHARDLM_REQUIRE(rows * cols <= buffer.numel(), ErrorKind::kInternal,
                  std::string("fp8 workspace: ") + what + " needs " +
                      std::to_string(rows * cols) + " codes, the buffer holds " +
                      std::to_string(buffer.numel()) + " (Fp8Workspace::allocate sizes)");
  return buffer.flat_view(0, Shape({rows, cols}));
}

}  // namespace

Fp8Workspace Fp8Workspace::allocate(TensorAllocator& alloc, const Fp8Recipe& recipe, int64_t rows,
                                    int64_t max_in, int64_t max_out, int64_t max_weight) {
  Fp8Workspace ws;
  ws.x = alloc.allocate(recipe.forward_format(), {rows * max_in});
  ws.w = alloc.allocate(recipe.forward_format(), {max_weight});
  ws.dy = alloc.allocate(recipe.gradient_format(), {rows * max_out});
  ws.dy_t = alloc.allocate(recipe.gradient_format(), {rows * max_out});
  ws.amax = alloc.allocate(DType::kF32, {3});
  ws.scale = alloc.allocate(DType::kF32, {3});
  ws.scale_inv = alloc.allocate(DType::kF32, {3 * Fp8Workspace::kScaleSlot});
  return ws;
}

void Fp8Linear::reduce_amax(const Tensor& amax) const {
  for (dist::Communicator* g : amax_groups)
    if (g != nullptr && g->size() > 1) g->all_reduce(amax, dist::ReduceOp::kMax);
}

void Fp8Linear::forward(DeviceContext& ctx, const Fp8Workspace& ws, Tensor out, const Tensor& in,
                        const Tensor& weight, const Tensor& bias) const {
  const int64_t OC = weight.size(0), IC = weight.size(1), N = in.numel() / IC;
  const Tensor amax = ws.amax.slice(0, 2);
  ops::abs_max(ctx, ws.amax.slice(0, 1), in);
  ops::abs_max(ctx, ws.amax.slice(1, 2), weight);
  reduce_amax(amax);
  for (int64_t k : {0, 1})
    ops::fp8_scale_from_amax(ctx, ws.scale.slice(k, k + 1), ws.scale_inv_of(k),
                             ws.amax.slice(k, k + 1), recipe.forward_format(), recipe.margin);
  const Tensor xq = codes(ws.x, N, IC, "x"), wq = codes(ws.w, OC, IC, "W");
  ops::fp8_quantize(ctx, xq, Tensor(), in, ws.scale.slice(0, 1));
  ops::fp8_quantize(ctx, wq, Tensor(), weight, ws.scale.slice(1, 2));
  ops::fp8_gemm(ctx, out.reshape({N, OC}), xq, ws.scale_inv_of(0), wq, ws.scale_inv_of(1), bias,
                /*accumulate=*/false);
}

void Fp8Linear::backward(DeviceContext& ctx, const Fp8Workspace& ws, Tensor din, Tensor dweight,
                         bool accumulate, const Tensor& dout, const Tensor& in,
                         const Tensor& weight) const {
  if (!din.defined() && !dweight.defined()) return;
  const int64_t OC = weight.size(0), IC = weight.size(1), N = in.numel() / IC;
  ops::abs_max(ctx, ws.amax.slice(0, 1), in);
  ops::abs_max(ctx, ws.amax.slice(1, 2), weight);
  ops::abs_max(ctx, ws.amax.slice(2, 3), dout);
  reduce_amax(ws.amax);
  for (int64_t k : {0, 1, 2})
    ops::fp8_scale_from_amax(ctx, ws.scale.slice(k, k + 1), ws.scale_inv_of(k),
                             ws.amax.slice(k, k + 1),
                             k == 2 ? recipe.gradient_format() : recipe.forward_format(),
                             recipe.margin);
  const Tensor x_scale_inv = ws.scale_inv_of(0), w_scale_inv = ws.scale_inv_of(1);
  const Tensor dy_scale_inv = ws.scale_inv_of(2);
  const Tensor dy2 = dout.reshape({N, OC});
  const Tensor dyq = din.defined() ? codes(ws.dy, N, OC, "dy") : Tensor();
  const Tensor dyq_t = dweight.defined() ? codes(ws.dy_t, OC, N, "dy^T") : Tensor();
  ops::fp8_quantize(ctx, dyq, dyq_t, dy2, ws.scale.slice(2, 3));
  if (din.defined()) {
    const Tensor wq_t = codes(ws.w, IC, OC, "W^T");
    ops::fp8_quantize(ctx, Tensor(), wq_t, weight, ws.scale.slice(1, 2));
    ops::fp8_gemm(ctx, din.reshape({N, IC}), dyq, dy_scale_inv, wq_t, w_scale_inv, Tensor(),
                  /*accumulate=*/false);
  }
  if (dweight.defined()) {
    const Tensor xq_t = codes(ws.x, IC, N, "x^T");
    ops::fp8_quantize(ctx, Tensor(), xq_t, in, ws.scale.slice(0, 1));
    ops::fp8_gemm(ctx, dweight, dyq_t, dy_scale_inv, xq_t, x_scale_inv, Tensor(), accumulate);
  }
}

}  // namespace shardlm::model
