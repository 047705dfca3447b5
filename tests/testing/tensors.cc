#include "tests/testing/tensors.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "shardlm/tensor/philox.h"

namespace shardlm::testing {

namespace {
double get(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF64: return t.data<double>()[i];
    case DType::kF32: return t.data<float>()[i];
    case DType::kI32: return t.data<int32_t>()[i];
    case DType::kI64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::kBF16: return bf16_bits_to_float(static_cast<uint16_t*>(t.raw())[i]);
    case DType::kF16: return fp16_bits_to_float(static_cast<uint16_t*>(t.raw())[i]);
    case DType::kU16: return t.data<uint16_t>()[i];
    default: SHARDLM_CHECK(false);
  }
}
void set(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::kF64: t.data<double>()[i] = v; return;
    case DType::kF32: t.data<float>()[i] = static_cast<float>(v); return;
    case DType::kI32: t.data<int32_t>()[i] = static_cast<int32_t>(v); return;
    case DType::kI64: t.data<int64_t>()[i] = static_cast<int64_t>(v); return;
    case DType::kBF16:
      static_cast<uint16_t*>(t.raw())[i] = float_to_bf16_bits(static_cast<float>(v));
      return;
    case DType::kF16:
      static_cast<uint16_t*>(t.raw())[i] = float_to_fp16_bits(static_cast<float>(v));
      return;
    case DType::kU16: t.data<uint16_t>()[i] = static_cast<uint16_t>(v); return;
    default: SHARDLM_CHECK(false);
  }
}
}  // namespace

OwnedTensor random_tensor(DType dtype, const Shape& shape, uint64_t seed, double stddev) {
  OwnedTensor t = OwnedTensor::empty(dtype, shape);
  for (int64_t i = 0; i < shape.numel(); ++i)
    set(t.view(), i, stddev * init_normal(seed, "testing.random_tensor", i));
  return t;
}

OwnedTensor random_ints(const Shape& shape, int32_t high, uint64_t seed) {
  OwnedTensor t = OwnedTensor::empty(DType::kI32, shape);
  for (int64_t i = 0; i < shape.numel(); ++i) {
    const PhiloxCounter r = philox4x32({static_cast<uint32_t>(i), 0, 0, 7}, key_from_u64(seed));
    t.view().data<int32_t>()[i] = static_cast<int32_t>(r[0] % static_cast<uint32_t>(high));
  }
  return t;
}

OwnedTensor random_permutations(int64_t rows, int64_t cols, uint64_t seed) {
  const std::vector<double> keys = to_vector(random_tensor(DType::kF64, {rows, cols}, seed));
  OwnedTensor t = OwnedTensor::empty(DType::kI32, {rows, cols});
  int32_t* out = t.view().data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const double* key = keys.data() + r * cols;
    std::iota(out + r * cols, out + (r + 1) * cols, 0);
    std::sort(out + r * cols, out + (r + 1) * cols,
              [key](int32_t a, int32_t b) { return key[a] < key[b]; });
  }
  return t;
}

OwnedTensor from_vector(DType dtype, const Shape& shape, const std::vector<double>& values) {
  SHARDLM_CHECK_EQ(static_cast<int64_t>(values.size()), shape.numel());
  OwnedTensor t = OwnedTensor::empty(dtype, shape);
  for (int64_t i = 0; i < shape.numel(); ++i) set(t.view(), i, values[i]);
  return t;
}

std::vector<double> to_vector(const Tensor& t) {
  std::vector<double> v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = get(t, i);
  return v;
}

OwnedTensor clone(const Tensor& t) { return from_vector(t.dtype(), t.shape(), to_vector(t)); }

OwnedTensor convert(const Tensor& t, DType dtype) {
  return from_vector(dtype, t.shape(), to_vector(t));
}

double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  SHARDLM_CHECK_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

double rel_error(const Tensor& actual, const Tensor& expected) {
  SHARDLM_CHECK(actual.shape() == expected.shape());
  return rel_error(to_vector(actual), to_vector(expected));
}

std::vector<double> finite_difference(Tensor x, const std::function<double()>& f, double h) {
  std::vector<double> grad(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double orig = get(x, i);
    set(x, i, orig + h);
    const double fp = f();
    set(x, i, orig - h);
    const double fm = f();
    set(x, i, orig);
    grad[i] = (fp - fm) / (2 * h);
  }
  return grad;
}

double dot(const Tensor& a, const Tensor& b) {
  SHARDLM_CHECK_EQ(a.numel(), b.numel());
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += get(a, i) * get(b, i);
  return s;
}

}  // namespace shardlm::testing
