// Fp8Recipe: which fp8 formats the transformer layers' GEMMs use (Megatron's --fp8-format,
// --fp8-recipe tensorwise, --fp8-margin).
//   e4m3:   activations, weights and gradients in E4M3;
//   hybrid: activations and weights in E4M3, output gradients in E5M2 (more range, less
//           precision), Transformer Engine's default.
// Scaling is per tensor and current ("tensorwise"): each operand's scale comes from its own
// amax just before it is quantised (model/fp8_linear.h), so no scaling state is carried
// between steps and a checkpoint needs nothing extra.
#pragma once

#include <string>

#include "shardlm/tensor/dtype.h"

namespace shardlm::model {

enum class Fp8Format { kNone, kE4M3, kHybrid };

struct Fp8Recipe {
  Fp8Format format = Fp8Format::kNone;
  int margin = 0;  // scales are divided by 2^margin (headroom below the format's largest value)

  bool enabled() const { return format != Fp8Format::kNone; }
  // Forward operands (activations, weights).
  DType forward_format() const { return DType::kF8E4M3; }
  // Output gradients.
  DType gradient_format() const {
    return format == Fp8Format::kHybrid ? DType::kF8E5M2 : DType::kF8E4M3;
  }
  // "hybrid", "e4m3" or "none" (Megatron's spelling of the flag's values).
  std::string name() const {
    return format == Fp8Format::kHybrid ? "hybrid" : format == Fp8Format::kE4M3 ? "e4m3" : "none";
  }
};

}  // namespace shardlm::model
