// rope_frequencies.h — RoPE's per-pair frequencies, including the long-context rescalings that
// Llama 3.x checkpoints (and Megatron's flags) use; shared by the CPU table, the CUDA table
// kernel (SHARDLM_HOST_DEVICE) and the config checks.
//
//   inv_freq_i = base^(-2i / R),  i = 0 .. R/2 - 1                          (the default)
//   llama3 (Hugging Face rope_type "llama3", Megatron --use-rope-scaling): with
//     wavelen = 2π / inv_freq, low = original / low_freq_factor,
//     high = original / high_freq_factor:
//       wavelen > low            -> inv_freq / factor                       (low frequencies)
//       high <= wavelen <= low   -> (1 - s) · inv_freq / factor + s · inv_freq,
//                                   s = (original / wavelen - low_freq_factor)
//                                       / (high_freq_factor - low_freq_factor)
//       wavelen < high           -> inv_freq                                (high: unchanged)
//   linear interpolation (rope_type "linear", Megatron --rotary-seq-len-interpolation-factor):
//     θ = (t / interpolation_factor) · inv_freq, i.e. inv_freq / interpolation_factor (after
//     llama3's, when both are set, as Megatron applies them).
// Computed in double (Hugging Face computes in fp32; the difference is far below bf16/fp32
// rounding of the table). With no scaling the result is base^(-2i/R) bit for bit as before.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "shardlm/base/host_device.h"

namespace shardlm::ops {

struct RopeFrequencies {
  double base = 10000.0;                  // --rotary-base
  bool llama3_scaling = false;            // --use-rope-scaling
  double scaling_factor = 8.0;            // --rope-scaling-factor
  double low_freq_factor = 1.0;           // --rope-scaling-low-freq-factor
  double high_freq_factor = 4.0;          // --rope-scaling-high-freq-factor
  double original_max_positions = 8192;   // --rope-scaling-original-max-position-embeddings
  double interpolation_factor = 1.0;      // --rotary-seq-len-interpolation-factor
};

// inv_freq of pair i of a rotary dim R, as the header says.
SHARDLM_HOST_DEVICE double rope_inv_freq(const RopeFrequencies& f, int64_t i, int64_t R) {
  double inv = pow(f.base, -2.0 * static_cast<double>(i) / static_cast<double>(R));
  if (f.llama3_scaling) {
    const double wavelen = 2.0 * 3.14159265358979323846 / inv;
    const double low_wavelen = f.original_max_positions / f.low_freq_factor;
    const double high_wavelen = f.original_max_positions / f.high_freq_factor;
    if (wavelen > low_wavelen) {
      inv = inv / f.scaling_factor;
    } else if (!(wavelen < high_wavelen)) {
      const double s = (f.original_max_positions / wavelen - f.low_freq_factor) /
                       (f.high_freq_factor - f.low_freq_factor);
      inv = (1.0 - s) * inv / f.scaling_factor + s * inv;
    }
  }
  return f.interpolation_factor == 1.0 ? inv : inv / f.interpolation_factor;
}

// "" when `f` is usable, else what is wrong, naming the flags and the fix.
inline std::string rope_frequencies_error(const RopeFrequencies& f) {
  auto positive = [](double v) { return v > 0 && std::isfinite(v); };
  auto num = [](double v) { return std::to_string(v); };
  if (!positive(f.base)) return "--rotary-base " + num(f.base) + " must be positive and finite";
  if (!positive(f.interpolation_factor))
    return "--rotary-seq-len-interpolation-factor " + num(f.interpolation_factor) +
           " must be positive and finite (1 = no interpolation)";
  if (!f.llama3_scaling) return "";
  if (!positive(f.scaling_factor))
    return "--rope-scaling-factor " + num(f.scaling_factor) + " must be positive and finite";
  if (!positive(f.low_freq_factor) || !positive(f.original_max_positions))
    return "--rope-scaling-low-freq-factor " + num(f.low_freq_factor) +
           " and --rope-scaling-original-max-position-embeddings " +
           num(f.original_max_positions) + " must be positive and finite";
  if (!(f.high_freq_factor > f.low_freq_factor) || !std::isfinite(f.high_freq_factor))
    return "--rope-scaling-high-freq-factor " + num(f.high_freq_factor) +
           " must be finite and greater than --rope-scaling-low-freq-factor " +
           num(f.low_freq_factor) + " (Llama 3.x uses 4 and 1)";
  return "";
}

}  // namespace shardlm::ops
