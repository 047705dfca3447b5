// cublaslt_handles.h — what every cuBLASLt caller of the CUDA backend shares: the data type of
// a ShardLM dtype (the compute dtypes; fp8 GEMM operands separately) and RAII owners of the
// descriptors (members of a plan or of a call object, so a throw halfway through building one
// frees what was made).
#pragma once

#include <cublasLt.h>

#include <string>

#include "shardlm/base/error.h"
#include "shardlm/tensor/dtype.h"

namespace shardlm::ops::cuda {

// fp32 / bf16 / fp16; anything else is an Error(kInvalidArgument) naming `op`.
inline cudaDataType_t lt_data_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: dtype " + dtype_name(dtype) +
                      " is not supported (use fp32, bf16 or fp16)");
  }
}

// fp8_e4m3 / fp8_e5m2 (the operands of fp8 GEMMs); anything else is an Error(kInvalidArgument)
// naming `op`. Separate from lt_data_type so a 16-bit GEMM never silently takes fp8 operands.
inline cudaDataType_t lt_fp8_data_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::kF8E4M3: return CUDA_R_8F_E4M3;
    case DType::kF8E5M2: return CUDA_R_8F_E5M2;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(op) + " on CUDA: fp8 GEMM operand dtype " + dtype_name(dtype) +
                      " is not fp8 (use fp8_e4m3 or fp8_e5m2)");
  }
}

struct LtMatmulDesc {
  cublasLtMatmulDesc_t h = nullptr;
  LtMatmulDesc() = default;
  LtMatmulDesc(const LtMatmulDesc&) = delete;
  LtMatmulDesc& operator=(const LtMatmulDesc&) = delete;
  ~LtMatmulDesc() { if (h) cublasLtMatmulDescDestroy(h); }
};
struct LtLayout {
  cublasLtMatrixLayout_t h = nullptr;
  LtLayout() = default;
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
  ~LtLayout() { if (h) cublasLtMatrixLayoutDestroy(h); }
};
struct LtPreference {
  cublasLtMatmulPreference_t h = nullptr;
  LtPreference() = default;
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
  ~LtPreference() { if (h) cublasLtMatmulPreferenceDestroy(h); }
};

}  // namespace shardlm::ops::cuda
