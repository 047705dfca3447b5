// Test helpers: random tensors, whole-tensor relative error, central finite differences.
//
// Relative error is ||a - b|| / max(||b||, tiny) over the whole tensor (DESIGN §4); any NaN
// makes it +inf, so NaN never passes.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "shardlm/tensor/tensor.h"

namespace shardlm::testing {

// Normal(0, stddev) values from a seeded stream (never zeros, so tests can fail).
OwnedTensor random_tensor(DType dtype, const Shape& shape, uint64_t seed, double stddev = 1.0);
// Uniform integers in [0, high) as int32.
OwnedTensor random_ints(const Shape& shape, int32_t high, uint64_t seed);
// [rows, cols] int32, each row a random permutation of 0 .. cols-1 (e.g. to build logits with
// distinct, well-separated values per row).
OwnedTensor random_permutations(int64_t rows, int64_t cols, uint64_t seed);
OwnedTensor from_vector(DType dtype, const Shape& shape, const std::vector<double>& values);
std::vector<double> to_vector(const Tensor& t);  // any float/int dtype on the CPU
OwnedTensor clone(const Tensor& t);
OwnedTensor convert(const Tensor& t, DType dtype);  // CPU copy in another float dtype

double rel_error(const Tensor& actual, const Tensor& expected);
double rel_error(const std::vector<double>& actual, const std::vector<double>& expected);

// d f / d x by central differences at every element of x (x is perturbed in place and
// restored). f returns a scalar. Use fp64 tensors with h ~ 1e-6.
std::vector<double> finite_difference(Tensor x, const std::function<double()>& f,
                                      double h = 1e-6);

// sum(a * b) over all elements, in double: the scalar "loss" used to test backward passes.
double dot(const Tensor& a, const Tensor& b);

}  // namespace shardlm::testing
