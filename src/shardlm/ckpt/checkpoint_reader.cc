#include "shardlm/ckpt/checkpoint_reader.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checksum.h"
#include "shardlm/ckpt/detail/convert.h"
#include "shardlm/ckpt/detail/mapped_file.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/ops/ops.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

namespace {
ShardRegion region_from_json(const nlohmann::json& shard) {
  ShardRegion r;
  r.offsets = shard.at("offsets").get<std::vector<int64_t>>();
  r.extents = shard.at("extents").get<std::vector<int64_t>>();
  if (shard.contains("flat_range")) {
    r.flat_begin = shard["flat_range"][0].get<int64_t>();
    r.flat_end = shard["flat_range"][1].get<int64_t>();
  }
  return r;
}
}  // namespace

std::optional<int64_t> CheckpointReader::latest_iteration(const std::string& root) {
  const fs::path path = fs::path(root) / kLatestFileName;
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text;
  std::getline(in, text);
  try {
    size_t used = 0;
    const long long it = std::stoll(text, &used);
    if (used == text.size() && it >= 0) return it;
  } catch (const std::exception&) {
  }
  throw Error(ErrorKind::kCorruptData,
              "'" + path.string() + "' should hold an iteration number but holds '" + text +
                  "'; fix it or pass --ckpt-step N to pick a checkpoint");
}

CheckpointReader::CheckpointReader(const std::string& root, int64_t iteration)
    : dir_((fs::path(root) / iteration_dir_name(iteration)).string()), iteration_(iteration) {
  const std::string meta_path = (fs::path(dir_) / kMetadataFileName).string();
  if (!fs::is_directory(dir_))
    throw Error(ErrorKind::kIo, "checkpoint directory '" + dir_ +
                                    "' does not exist; check --load / --ckpt-step (complete "
                                    "checkpoints are the iter_* directories without .tmp)");
  std::ifstream in(meta_path, std::ios::binary);
  if (!in)
    throw Error(ErrorKind::kIo, "checkpoint index '" + meta_path +
                                    "' is missing; the checkpoint is incomplete or not a ShardLM "
                                    "checkpoint");
  std::stringstream ss;
  ss << in.rdbuf();
  meta_ = nlohmann::json::parse(ss.str(), nullptr, false);
  if (meta_.is_discarded() || !meta_.is_object() || !meta_.contains("tensors") ||
      !meta_.contains("files"))
    throw Error(ErrorKind::kCorruptData, "checkpoint index '" + meta_path +
                                             "' is not a valid ShardLM index (damaged file)");
  if (meta_.value("format", std::string()) != kFormatName ||
      meta_.value("version", 0) > kFormatVersion)
    throw Error(ErrorKind::kUnsupported,
                "checkpoint index '" + meta_path + "' has format " + meta_.value("format", "?") +
                    " version " + std::to_string(meta_.value("version", 0)) +
                    "; this ShardLM reads " + kFormatName + " up to version " +
                    std::to_string(kFormatVersion));
}

CheckpointReader::~CheckpointReader() = default;

bool CheckpointReader::contains(const std::string& key) const {
  return meta_["tensors"].contains(key);
}

std::vector<std::string> CheckpointReader::keys() const {
  std::vector<std::string> out;
  for (auto it = meta_["tensors"].begin(); it != meta_["tensors"].end(); ++it)
    out.push_back(it.key());
  return out;
}

Shape CheckpointReader::global_shape(const std::string& key) const {
  SHARDLM_REQUIRE(contains(key), ErrorKind::kInvalidConfig,
                  "checkpoint '" + dir_ + "' has no tensor '" + key + "'");
  return Shape(meta_["tensors"][key]["shape"].get<std::vector<int64_t>>());
}

DType CheckpointReader::dtype(const std::string& key) const {
  SHARDLM_REQUIRE(contains(key), ErrorKind::kInvalidConfig,
                  "checkpoint '" + dir_ + "' has no tensor '" + key + "'");
  return dtype_from_safetensors_name(meta_["tensors"][key]["dtype"].get<std::string>());
}

const SafetensorsReader& CheckpointReader::file(const std::string& name) {
  auto it = files_.find(name);
  if (it != files_.end()) return *it->second;
  const std::string path = (fs::path(dir_) / name).string();
  SHARDLM_REQUIRE(meta_["files"].contains(name), ErrorKind::kCorruptData,
                  "checkpoint index of '" + dir_ + "' names shard file " + name +
                      " but does not list it among its files (damaged index)");
  if (!fs::exists(path))
    throw Error(ErrorKind::kIo, "checkpoint shard file '" + path +
                                    "' is missing; the checkpoint is incomplete (restore the file "
                                    "or load an older checkpoint with --ckpt-step)");
  const uint64_t expected = meta_["files"][name]["bytes"].get<uint64_t>();
  const uint64_t actual = fs::file_size(path);
  if (actual != expected)
    throw Error(ErrorKind::kCorruptData,
                "checkpoint shard file '" + path + "' has " + std::to_string(actual) +
                    " bytes but the index records " + std::to_string(expected) +
                    (actual < expected ? " (truncated)" : "") +
                    "; restore it or load an older checkpoint with --ckpt-step");
  auto reader = std::make_unique<SafetensorsReader>(path);
  return *files_.emplace(name, std::move(reader)).first->second;
}

void CheckpointReader::read(DeviceContext& ctx, const ShardedTensor& target,
                            const ReadOptions& options) {
  const std::string& key = target.key;
  SHARDLM_REQUIRE(contains(key), ErrorKind::kInvalidConfig,
                  "checkpoint '" + dir_ + "' has no tensor '" + key +
                      "' (saved with a different model or without optimizer state? see "
                      "--finetune / --no-load-optim)");
  const nlohmann::json& entry = meta_["tensors"][key];
  const Shape saved_shape(entry["shape"].get<std::vector<int64_t>>());
  const DType saved_dtype = dtype_from_safetensors_name(entry["dtype"].get<std::string>());
  target.region.validate(target.global_shape, "loading " + key);
  SHARDLM_REQUIRE(target.data.numel() == target.region.numel(), ErrorKind::kInternal,
                  "loading " + key + ": target holds " + std::to_string(target.data.numel()) +
                      " elements for shard " + target.region.to_string());
  const bool shape_differs = saved_shape != target.global_shape;
  if (shape_differs) {
    SHARDLM_REQUIRE(options.allow_shape_mismatch &&
                        saved_shape.rank() == target.global_shape.rank(),
                    ErrorKind::kInvalidConfig,
                    "checkpoint '" + dir_ + "': tensor '" + key + "' has global shape " +
                        saved_shape.to_string() + " but the model expects " +
                        target.global_shape.to_string() +
                        "; the model flags differ from the ones the checkpoint was saved with");
  }
  // Elements the saved tensor can supply.
  int64_t expected = target.region.numel();
  if (shape_differs)  // the target's elements that lie inside the saved tensor
    expected = copy_overlap(target.region, nullptr, ShardRegion::whole(saved_shape), nullptr,
                            dtype_size(saved_dtype));

  // Gather into a host buffer in the saved dtype (zero where the saved tensor has nothing).
  const size_t elem = dtype_size(saved_dtype);
  std::vector<std::byte> staging(static_cast<size_t>(target.region.numel()) * elem);
  int64_t copied = 0;
  for (const nlohmann::json& shard : entry["shards"]) {
    const ShardRegion saved = region_from_json(shard);
    // Cheap box test before touching the file.
    bool overlaps = true;
    for (size_t a = 0; a < saved.offsets.size() && overlaps; ++a)
      overlaps = std::max(saved.offsets[a], target.region.offsets[a]) <
                 std::min(saved.offsets[a] + saved.extents[a],
                          target.region.offsets[a] + target.region.extents[a]);
    if (!overlaps || saved.numel() == 0) continue;
    const std::string file_name = shard["file"].get<std::string>();
    // A rank's second and later pieces of one tensor are stored as "<key>#<n>" ("entry").
    const std::string entry_name = shard.value("entry", key);
    const SafetensorsReader& f = file(file_name);
    if (!f.contains(entry_name))
      throw Error(ErrorKind::kCorruptData, "checkpoint shard file '" + f.path() +
                                               "' lacks tensor '" + entry_name +
                                               "' that the index places there (damaged file)");
    const SafetensorsEntry& e = f.entry(entry_name);
    SHARDLM_REQUIRE(e.dtype == saved_dtype && e.numel() == saved.numel(),
                    ErrorKind::kCorruptData,
                    "checkpoint shard file '" + f.path() + "': tensor '" + key + "' holds " +
                        std::to_string(e.numel()) + " " + dtype_name(e.dtype) +
                        " elements but the index says " + std::to_string(saved.numel()) + " " +
                        dtype_name(saved_dtype));
    const std::string shard_id = file_name + "/" + entry_name;
    if (!verified_shards_.count(shard_id)) {
      const std::string want = shard["xxh64"].get<std::string>();
      const std::string got = checksum_hex(xxh64(e.bytes.data(), e.bytes.size()));
      if (got != want)
        throw Error(ErrorKind::kCorruptData,
                    "checksum mismatch in checkpoint shard file '" + f.path() + "', tensor '" +
                        key + "' (XXH64 " + got + ", index " + want +
                        "): the data is corrupt; restore the file or load an older checkpoint "
                        "with --ckpt-step");
      verified_shards_.insert(shard_id);
    }
    copied += copy_overlap(target.region, staging.data(), saved, e.bytes.data(), elem);
  }
  if (copied != expected)
    throw Error(ErrorKind::kCorruptData,
                "checkpoint '" + dir_ + "': the saved shards of '" + key + "' supply " +
                    std::to_string(copied) + " of the " + std::to_string(expected) +
                    " elements of region " + target.region.to_string() +
                    " (missing or overlapping shards in the index)");

  // Convert to the target dtype and place it on the target's device.
  const Tensor& dst = target.data;
  if (dst.device().is_cpu()) {
    detail::convert_elements(dst.raw(), dst.dtype(), staging.data(), saved_dtype, dst.numel());
  } else {
    OwnedTensor host = OwnedTensor::empty(dst.dtype(), dst.shape());
    detail::convert_elements(host.view().raw(), dst.dtype(), staging.data(), saved_dtype,
                             dst.numel());
    ops::copy(ctx, dst, host.view());
  }
}

void CheckpointReader::verify_files() const {
  for (auto it = meta_["files"].begin(); it != meta_["files"].end(); ++it) {
    const std::string path = (fs::path(dir_) / it.key()).string();
    if (!fs::exists(path))
      throw Error(ErrorKind::kIo, "checkpoint shard file '" + path + "' is missing");
    detail::MappedFile f(path);
    const uint64_t expected = it.value()["bytes"].get<uint64_t>();
    if (f.size() != expected)
      throw Error(ErrorKind::kCorruptData, "checkpoint shard file '" + path + "' has " +
                                               std::to_string(f.size()) + " bytes, index says " +
                                               std::to_string(expected));
    const std::string got = checksum_hex(xxh64(f.bytes().data(), f.size()));
    const std::string want = it.value()["xxh64"].get<std::string>();
    if (got != want)
      throw Error(ErrorKind::kCorruptData, "checksum mismatch in checkpoint shard file '" +
                                               path + "' (XXH64 " + got + ", index " + want + ")");
  }
}

}  // namespace shardlm::ckpt
