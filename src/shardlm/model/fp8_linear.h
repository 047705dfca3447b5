// fp8 GEMMs of a linear layer (Megatron's --fp8-format with the tensorwise recipe, as Transformer
// Engine's Float8CurrentScaling): y = x W^T + b with x and W quantised to E4M3 per tensor, and in
// backward the output gradient dy quantised to the recipe's gradient format:
//   forward:      y  = fp8(x) · fp8(W)^T (+ b, in the GEMM's epilogue)
//   input grad:   dx = fp8(dy) · fp8(W)           (the weight's transposed codes)
//   weight grad:  dW = fp8(dy)^T · fp8(x)         (both transposed codes), into the fp32 main
//                 gradient when gradient-accumulation fusion is on
// Each operand's scale maps its amax to the format's largest value (ops::fp8_scale_from_amax).
// The amaxes are max-reduced over the groups that split the operands (tensor parallelism splits
// weights and one side's activations, context parallelism the tokens), so every layout quantises
// exactly as one rank does and parallel runs match the single-rank run. Backward quantises x and
// W again from the values forward used (the layer keeps x in 16-bit anyway); recomputing their
// amaxes gives the same scales.
//
// Fp8Workspace holds the quantised operands. They live only during one linear's forward or
// backward, so one workspace serves every layer of a model replica (allocated with the layers'
// scratch). The bias gradient comes from the 16-bit dy as before (ops::linear_backward).
//
//   Fp8Workspace ws = Fp8Workspace::allocate(alloc, rows, max_in, max_out, max_weight);
//   Fp8Linear f{recipe, {tp.group, cp.group}};
//   f.forward(ctx, ws, y, x, W, b);
//   f.backward(ctx, ws, dx, dW, /*accumulate=*/true, dy, x, W);
#pragma once

#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/fp8_recipe.h"
#include "shardlm/tensor/arena.h"
#include "shardlm/tensor/device_context.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::model {

struct Fp8Workspace {
  Tensor x;      // [rows · max_in] codes: x in forward, x^T in backward
  Tensor w;      // [max_weight] codes: W in forward, W^T in backward
  Tensor dy;     // [rows · max_out] codes of dy
  Tensor dy_t;   // [rows · max_out] codes of dy^T
  Tensor amax;   // [3] fp32: x, W, dy
  Tensor scale;  // [3] fp32
  // [3 · kScaleSlot] fp32: operand k's 1/scale at element k · kScaleSlot. The fp8 GEMM reads
  // it through a device pointer, which cuBLASLt's Hopper kernels want 16-byte aligned (a slot
  // at +4 bytes was refused at launch, measured on H100), so each gets its own 16 bytes.
  static constexpr int64_t kScaleSlot = 4;
  Tensor scale_inv;
  Tensor scale_inv_of(int64_t k) const { return scale_inv.slice(k * kScaleSlot, k * kScaleSlot + 1); }

  bool defined() const { return amax.defined(); }
  // rows: the most rows a linear sees (tokens of a micro-batch on the rank); max_in / max_out:
  // the widest input / output features; max_weight: the largest weight (elements).
  static Fp8Workspace allocate(TensorAllocator& alloc, const Fp8Recipe& recipe, int64_t rows,
                               int64_t max_in, int64_t max_out, int64_t max_weight);
};

struct Fp8Linear {
  Fp8Recipe recipe;
  // Communicators whose ranks hold parts of this linear's operands (null entries are skipped).
  std::vector<dist::Communicator*> amax_groups;

  // out[N, OC] = x[N, IC] · weight[OC, IC]^T + bias (bias may be undefined).
  void forward(DeviceContext& ctx, const Fp8Workspace& ws, Tensor out, const Tensor& in,
               const Tensor& weight, const Tensor& bias) const;
  // din[N, IC] (assigned; skipped when undefined) and dweight[OC, IC] (skipped when undefined;
  // added to when accumulate, else assigned; may be the wider fp32 main gradient).
  void backward(DeviceContext& ctx, const Fp8Workspace& ws, Tensor din, Tensor dweight,
                bool accumulate, const Tensor& dout, const Tensor& in, const Tensor& weight) const;

 private:
  void reduce_amax(const Tensor& amax) const;
};

}  // namespace shardlm::model
