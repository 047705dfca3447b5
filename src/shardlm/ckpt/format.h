// Constants of ShardLM's checkpoint format (prose: docs/formats/checkpoint.md).
//
// A checkpoint root (--save / --load DIR) holds one sub-directory per saved iteration and a
// latest-iteration file, as Megatron-LM:
//
//   DIR/latest_checkpointed_iteration.txt     "10\n" (the newest COMPLETE checkpoint)
//   DIR/iter_0000010/metadata.json            index: every tensor's global shape, dtype and
//                                              shards (file, offsets, extents, checksum), the
//                                              files' sizes and checksums, training state, config
//   DIR/iter_0000010/rank_00000.safetensors   the shards rank 0 wrote
//   DIR/iter_0000010.tmp/                     a save in progress (renamed when complete)
//
// Tensor keys: "model/<parameter name>", "optim/exp_avg/<name>", "optim/exp_avg_sq/<name>".
#pragma once

#include <cstdint>
#include <string>

namespace shardlm::ckpt {

inline constexpr char kFormatName[] = "shardlm-checkpoint";
inline constexpr int kFormatVersion = 1;

inline constexpr char kLatestFileName[] = "latest_checkpointed_iteration.txt";
inline constexpr char kMetadataFileName[] = "metadata.json";
// A save in progress lives in "<iteration dir><kTempSuffix>" until it is published.
inline constexpr char kTempSuffix[] = ".tmp";
// A published iteration being replaced by a new save of the same iteration is moved here first.
inline constexpr char kReplacedSuffix[] = ".replaced";

// Key prefixes of the tensors in a checkpoint.
inline constexpr char kModelPrefix[] = "model/";
inline constexpr char kExpAvgPrefix[] = "optim/exp_avg/";
inline constexpr char kExpAvgSqPrefix[] = "optim/exp_avg_sq/";

// Largest safetensors header we accept (the format's own reference limit is 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// "iter_0000010" (Megatron's 7-digit zero-padded iteration directory).
std::string iteration_dir_name(int64_t iteration);
// "rank_00003.safetensors" / "rank_00003.json" (the per-rank part of the index before merging).
std::string rank_file_name(int rank);
std::string rank_part_name(int rank);

}  // namespace shardlm::ckpt
