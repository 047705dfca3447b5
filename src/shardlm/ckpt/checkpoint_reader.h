// CheckpointReader: opens one published checkpoint (DIR/iter_NNNNNNN) and reads any region of
// any tensor into any layout: each target shard gathers its elements from whichever saved shards
// overlap it (copy_overlap), so a checkpoint saved with one TP / DP / distributed-optimizer
// layout loads into another. Files are memory-mapped, so a rank reads only the saved shards that
// overlap its own; each saved shard's XXH64 is verified the first time it is used, and the file
// size against the index before any byte is used (a truncated file is named at once).
//
// Errors (never a crash or a silent partial load): a missing directory, index or shard file →
// kIo naming the path; a truncated file, checksum mismatch, missing tensor in a shard file or
// shards that do not cover the requested region → kCorruptData naming the file and tensor; a
// global shape that differs from the requested one → kInvalidConfig naming the tensor and both
// shapes.
//
// Thread contract: one reader per rank (the lazily opened files are cached without locks).
//
//   auto it = CheckpointReader::latest_iteration("/ckpts");        // std::nullopt: none yet
//   CheckpointReader reader("/ckpts", *it);
//   reader.read(ctx, {"model/decoder.final_layernorm.weight", {C}, region, param.value});
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/ckpt/safetensors.h"
#include "shardlm/ckpt/sharded_tensor.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::ckpt {

struct ReadOptions {
  // Accept a saved global shape that differs from the requested one (a vocabulary padded to a
  // different multiple): the common part is copied, the rest of the target is zero-filled.
  bool allow_shape_mismatch = false;
};

class CheckpointReader {
 public:
  // The iteration in root's latest_checkpointed_iteration.txt; nullopt when root has none.
  // Throws kCorruptData when the file does not hold an iteration number.
  static std::optional<int64_t> latest_iteration(const std::string& root);

  // Opens root/iter_<iteration>/metadata.json. Throws kIo naming the path when it is missing.
  CheckpointReader(const std::string& root, int64_t iteration);
  ~CheckpointReader();

  const std::string& directory() const { return dir_; }
  int64_t iteration() const { return iteration_; }
  // The training state and config saved with the checkpoint (the writer's `state`).
  const nlohmann::json& state() const { return meta_["state"]; }
  const nlohmann::json& metadata() const { return meta_; }
  bool contains(const std::string& key) const;
  std::vector<std::string> keys() const;
  Shape global_shape(const std::string& key) const;
  DType dtype(const std::string& key) const;

  // Fills target.data (host or device; any float dtype, converted) with target.region of the
  // saved tensor target.key, whose global shape must equal target.global_shape.
  void read(DeviceContext& ctx, const ShardedTensor& target, const ReadOptions& options = {});

  // Checks every file of the checkpoint: present, of the indexed size, and whole-file XXH64.
  void verify_files() const;

 private:
  const SafetensorsReader& file(const std::string& name);

  std::string dir_;
  int64_t iteration_ = 0;
  nlohmann::json meta_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> files_;
  std::set<std::string> verified_shards_;  // "<file>/<key>"
};

}  // namespace shardlm::ckpt
