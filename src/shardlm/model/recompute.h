// Activation recomputation, as Megatron's --recompute-granularity / --recompute-method /
// --recompute-num-layers (DESIGN §2.3: recomputing is a per-module choice, planned up front).
//
//  - selective: every layer keeps its inputs to the core attention (the post-RoPE QKV) but not
//    the attention output or its log-sum-exp; backward re-runs the flash-attention forward of
//    that layer first. One shared buffer holds the attention output for all layers.
//  - full + uniform + N: layers are split into consecutive chunks of N; only each layer's input
//    (the residual stream, which the model keeps anyway) is stored, and backward re-runs a whole
//    chunk's forward before its backward. N sets of layer activations are allocated in all.
//  - full + block + N: the first N layers are recomputed one at a time (one set of
//    activations), the others store everything.
//  - independently of the above, the cheap outputs (both norm outputs and the GELU/SwiGLU
//    output, 2 [N, C] + [N, F/TP] per layer) are recomputed in backward by default, as
//    torch.compile does; norm_activation = false (--no-recompute-norm-activation) saves them
//    instead, as Megatron does: faster (no norm or activation forward in backward), more memory.
// Recomputed forwards draw the same dropout masks (keyed by step, micro-batch, layer), so a run
// with recomputation gives bit-identical losses and gradients to one without.
#pragma once

#include <cstdint>
#include <string>

namespace shardlm::model {

struct RecomputeConfig {
  std::string granularity;  // "" (none), "selective" or "full"
  std::string method;       // "" (unset), "uniform" or "block" (full only)
  int64_t num_layers = 0;   // 0: unset (means 1 when a method is given)
  bool norm_activation = true;  // recompute the norm and activation outputs (see above)

  bool selective() const { return granularity == "selective"; }
  bool full() const { return granularity == "full"; }
  int64_t layers_per_unit() const { return num_layers > 0 ? num_layers : 1; }
  // Throws Error(kInvalidConfig) naming the flag, the value and the fix.
  void validate(int64_t model_layers) const;

  // full only: is layer l recomputed, and which [begin, end) chunk of layers is re-run with it.
  bool recomputes_layer(int64_t l) const;
  std::pair<int64_t, int64_t> chunk_of(int64_t l, int64_t model_layers) const;
  // full only: activation sets to allocate for recomputed layers (the slot of layer l is
  // l - chunk_of(l).first).
  int64_t slots() const;
};

}  // namespace shardlm::model
