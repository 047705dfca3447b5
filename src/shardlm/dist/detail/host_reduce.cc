#include "shardlm/dist/detail/host_reduce.h"

#include <cmath>
#include <limits>
#include <type_traits>

#include "shardlm/base/check.h"

namespace shardlm::dist::detail {
namespace {

template <typename Storage, typename Acc>
struct Plain {
  using AccT = Acc;
  static Acc load(const void* p, int64_t i) {
    return static_cast<Acc>(static_cast<const Storage*>(p)[i]);
  }
  static void store(void* p, int64_t i, Acc v) { static_cast<Storage*>(p)[i] = static_cast<Storage>(v); }
};

struct BF16 {
  using AccT = float;
  static float load(const void* p, int64_t i) {
    return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  static void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
  }
};

struct F16 {
  using AccT = float;
  static float load(const void* p, int64_t i) {
    return fp16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  static void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_fp16_bits(v);
  }
};

// Integers accumulate in uint64_t so overflow wraps (defined) instead of being UB.
template <typename Storage>
struct Int {
  using AccT = int64_t;
  static int64_t load(const void* p, int64_t i) { return static_cast<const Storage*>(p)[i]; }
  static void store(void* p, int64_t i, int64_t v) {
    static_cast<Storage*>(p)[i] = static_cast<Storage>(v);
  }
};

template <typename Acc>
Acc combine(Acc a, Acc b, ReduceOp op) {
  if constexpr (std::is_floating_point_v<Acc>) {
    if (op != ReduceOp::kSum && (std::isnan(a) || std::isnan(b))) {
      return std::numeric_limits<Acc>::quiet_NaN();
    }
  }
  switch (op) {
    case ReduceOp::kSum:
      if constexpr (std::is_integral_v<Acc>) {
        return static_cast<Acc>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
      } else {
        return a + b;
      }
    case ReduceOp::kMax: return a > b ? a : b;
    case ReduceOp::kMin: return a < b ? a : b;
  }
  return a;
}

template <typename Traits>
void reduce_typed(ReduceOp op, void* dst, std::span<const void* const> inputs, int64_t offset,
                  int64_t n) {
  using Acc = typename Traits::AccT;
  for (int64_t i = 0; i < n; ++i) {
    Acc acc = Traits::load(inputs[0], offset + i);
    for (size_t r = 1; r < inputs.size(); ++r) {
      acc = combine<Acc>(acc, Traits::load(inputs[r], offset + i), op);
    }
    Traits::store(dst, i, acc);
  }
}

}  // namespace

void host_reduce(DType dtype, ReduceOp op, void* dst, std::span<const void* const> inputs,
                 int64_t offset, int64_t n) {
  SHARDLM_CHECK(!inputs.empty());
  switch (dtype) {
    case DType::kF64: return reduce_typed<Plain<double, double>>(op, dst, inputs, offset, n);
    case DType::kF32: return reduce_typed<Plain<float, float>>(op, dst, inputs, offset, n);
    case DType::kBF16: return reduce_typed<BF16>(op, dst, inputs, offset, n);
    case DType::kF16: return reduce_typed<F16>(op, dst, inputs, offset, n);
    case DType::kI32: return reduce_typed<Int<int32_t>>(op, dst, inputs, offset, n);
    case DType::kI64: return reduce_typed<Int<int64_t>>(op, dst, inputs, offset, n);
    default: break;
  }
  SHARDLM_CHECK(false && "host_reduce: dtype without a reduction (checked by the caller)");
}

}  // namespace shardlm::dist::detail
