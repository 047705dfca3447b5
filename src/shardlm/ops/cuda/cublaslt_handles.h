// cublaslt_handles.h — what every cuBLASLt caller of the CUDA backend shares: the data type of
// a ShardLM dtype and RAII owners of the descriptors (members of a plan or of a call object, so
// a throw halfway through building one frees what was made).
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
