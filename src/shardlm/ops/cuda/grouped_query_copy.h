// grouped_query_copy.h — moves the query heads of a grouped (GQA) fused QKV tensor to and from a
// contiguous [rows, NH, HS] buffer, for attention engines that take Q with one stride per head
// (cuDNN): in qkv a row holds, per group, R = NH / G query heads then its K and V heads, so the
// query heads of a row are not equally spaced when G > 1 and R > 1.
//
// One kernel for all groups, 16-byte moves where the head size and pointers allow (was one
// cudaMemcpy2DAsync per group with R * HS-wide rows).
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace shardlm::ops::cuda {

struct GroupedQueryLayout {
  int64_t rows;   // B * T
  int64_t G, R;   // query groups, query heads per group
  int64_t HS;     // head size
  size_t elt;     // bytes per element (2: bf16/fp16)
};

// to_qkv = false: buf[row, g*R + r, :] = qkv[row, g*(R+2) + r, :] (gather Q);
// to_qkv = true:  the reverse (scatter dQ), leaving qkv's K and V columns untouched.
void copy_grouped_queries(const GroupedQueryLayout& L, const void* src, void* dst, bool to_qkv,
                          CUstream_st* stream);

}  // namespace shardlm::ops::cuda
