// Test cases of dist/all_to_all.h shared by the CPU and GPU tests: a matrix of row counts
// (source rank x destination rank), payloads whose every element encodes (source rank, row,
// column), and one rank's exchange checked element by element against the permutation it
// defines. Works with any DeviceContext: device tensors are filled and read through ops::copy.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "shardlm/dist/all_to_all.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::dist::testing {

using RowCounts = std::vector<std::vector<int64_t>>;  // [P][P]: rows rank p sends rank q

// Random counts in [0, 4] (zeros included); with P > 1 rank seed % P sends nothing at all, and
// for odd seeds rank (seed / 2) % P receives nothing either.
inline RowCounts random_row_counts(int n, uint64_t seed) {
  std::mt19937_64 g(seed * 7919u + static_cast<uint64_t>(n));
  std::uniform_int_distribution<int64_t> rows(0, 4);
  RowCounts c(static_cast<size_t>(n), std::vector<int64_t>(static_cast<size_t>(n)));
  for (auto& row : c)
    for (int64_t& x : row) x = rows(g);
  if (n > 1) {
    c[seed % n].assign(static_cast<size_t>(n), 0);
    if (seed % 2 == 1)
      for (auto& row : c) row[(seed / 2) % n] = 0;
  }
  return c;
}

// What rank `me` receives: column `me` of the matrix.
inline std::vector<int64_t> column(const RowCounts& c, int me) {
  std::vector<int64_t> col;
  for (const auto& row : c) col.push_back(row[static_cast<size_t>(me)]);
  return col;
}

// Element `col` of row `row` of rank `src`'s input: exact in int32, fp32 and fp64, never zero.
inline double encoded_value(int src, int64_t row, int64_t col) {
  return (src + 1) * 1'000'000.0 + static_cast<double>(row) * 1'000.0 +
         static_cast<double>(col) + 1;
}

inline void store_value(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::kF64: t.data<double>()[i] = v; break;
    case DType::kF32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::kI32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::kI64: t.data<int64_t>()[i] = static_cast<int64_t>(v); break;
    default: FAIL() << "store_value: dtype " << dtype_name(t.dtype());
  }
}

inline double load_value(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF64: return t.data<double>()[i];
    case DType::kF32: return t.data<float>()[i];
    case DType::kI32: return t.data<int32_t>()[i];
    case DType::kI64: return static_cast<double>(t.data<int64_t>()[i]);
    default: ADD_FAILURE() << "load_value: dtype " << dtype_name(t.dtype());
  }
  return 0;
}

// Shape [rows, row_shape...].
inline Shape rows_of(int64_t rows, const Shape& row_shape) {
  std::vector<int64_t> dims = row_shape.dims();
  dims.insert(dims.begin(), rows);
  return Shape(dims);
}

// Rank `src`'s input (host): every element encoded_value(src, row, column within the row).
inline OwnedTensor encoded_input(int src, int64_t rows, DType dtype, const Shape& row_shape) {
  OwnedTensor t = OwnedTensor::empty(dtype, rows_of(rows, row_shape));
  const int64_t width = row_shape.numel();
  for (int64_t i = 0; i < t.view().numel(); ++i)
    store_value(t.view(), i, encoded_value(src, i / width, i % width));
  return t;
}

// Checks the host tensor `got` against what rank `me` must receive for counts c.
inline void expect_received(const Tensor& got, const RowCounts& c, int me, const Shape& row_shape,
                            const std::string& what) {
  const int n = static_cast<int>(c.size());
  const int64_t width = row_shape.numel();
  int64_t rows = 0;
  for (int p = 0; p < n; ++p) rows += c[p][me];
  if (got.size(0) != rows || got.numel() != rows * width) {
    ADD_FAILURE() << what << ": rank " << me << " received " << got.shape().to_string()
                  << ", expected " << rows << " rows of " << row_shape.to_string();
    return;
  }
  int64_t out_row = 0, wrong = 0;
  for (int p = 0; p < n; ++p) {
    int64_t src_row = 0;  // where rank p's block for `me` starts in p's input
    for (int q = 0; q < me; ++q) src_row += c[p][q];
    for (int64_t i = 0; i < c[p][me]; ++i, ++out_row) {
      for (int64_t j = 0; j < width; ++j) {
        const double want = encoded_value(p, src_row + i, j);
        const double have = load_value(got, out_row * width + j);
        if (have != want && wrong++ == 0) {
          ADD_FAILURE() << what << ": rank " << me << " out row " << out_row << " column " << j
                        << " is " << have << ", expected " << want << " (rank " << p << "'s row "
                        << src_row + i << ")";
        }
      }
    }
  }
  EXPECT_EQ(wrong, 0) << what << ": rank " << me << ", elements wrong";
}

// One rank's whole exchange for counts c: recv_rows from all_to_all_counts (checked against the
// matrix), the input copied to ctx's device, the output (pre-filled with -1) copied back and
// checked element by element.
inline void exchange_and_check(Communicator& comm, DeviceContext& ctx, const RowCounts& c,
                               DType dtype, const Shape& row_shape, const std::string& what) {
  const int me = comm.rank();
  const std::vector<int64_t>& send_rows = c[static_cast<size_t>(me)];
  const std::vector<int64_t> recv_rows = all_to_all_counts(comm, ctx, send_rows);
  EXPECT_EQ(recv_rows, column(c, me)) << what << ": all_to_all_counts on rank " << me;
  int64_t n_send = 0, n_recv = 0;
  for (int64_t x : send_rows) n_send += x;
  for (int64_t x : recv_rows) n_recv += x;
  OwnedTensor in_host = encoded_input(me, n_send, dtype, row_shape);
  OwnedTensor out_host = OwnedTensor::empty(dtype, rows_of(n_recv, row_shape));
  for (int64_t i = 0; i < out_host.view().numel(); ++i) store_value(out_host.view(), i, -1);
  OwnedTensor in = OwnedTensor::empty(dtype, in_host.view().shape(), ctx.device());
  OwnedTensor out = OwnedTensor::empty(dtype, out_host.view().shape(), ctx.device());
  ops::copy(ctx, in.view(), in_host.view());
  ops::copy(ctx, out.view(), out_host.view());
  all_to_all_v(comm, ctx, out.view(), in.view(), send_rows, recv_rows);
  ops::copy(ctx, out_host.view(), out.view());
  expect_received(out_host.view(), c, me, row_shape, what);
}

}  // namespace shardlm::dist::testing
