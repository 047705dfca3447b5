// SHARDLM_HOST_DEVICE: a small function compiled for the host and, under nvcc, for the device
// too (shared math such as tensor/normal_math.h and tensor/shard_index_map.h).
#pragma once

#if defined(__CUDACC__)
#define SHARDLM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SHARDLM_HOST_DEVICE inline
#endif
