#include "shardlm/ckpt/checkpoint_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checksum.h"
#include "shardlm/ckpt/detail/agree.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/ckpt/safetensors.h"
#include "shardlm/ops/ops.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {

namespace {
void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // best effort (directories on some file systems)
  ::fsync(fd);
  ::close(fd);
}

void make_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw Error(ErrorKind::kIo, "cannot create checkpoint directory '" + dir.string() +
                                    "': " + ec.message() + "; check --save and its permissions");
}

void remove_all_or_throw(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec)
    throw Error(ErrorKind::kIo, "cannot remove '" + dir.string() + "': " + ec.message());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, "cannot read '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Agreement across ranks: returns the number of ranks that report failure.
int count_failures(dist::Communicator* comm, DeviceContext& ctx, bool failed) {
  return detail::all_reduce_int(comm, ctx, failed ? 1 : 0, dist::ReduceOp::kSum);
}

std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown error";
  }
}

// Complete checkpoints (iter_NNNNNNN directories) under root, by iteration.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("iter_", 0) != 0 || name.size() != 12) continue;
    if (name.find_first_not_of("0123456789", 5) != std::string::npos) continue;
    out.emplace_back(std::stoll(name.substr(5)), entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + kTempSuffix;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw Error(ErrorKind::kIo, "cannot write '" + tmp + "'");
  }
  fsync_path(tmp);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

// One save between save() and finalize(): the host snapshot and the writer thread.
struct CheckpointWriter::Pending {
  fs::path root, final_dir, temp_dir;
  int64_t iteration = 0;
  int rank = 0, world = 1;
  nlohmann::json state;
  SaveOptions options;
  std::vector<ShardedTensor> shards;   // data = views of the writer's staging copies
  std::thread thread;
  std::exception_ptr error;
  double write_seconds = 0;
  DeviceContext* ctx = nullptr;  // the caller's (for the agreement all-reduces)

  // Writes this rank's safetensors file and index part into temp_dir.
  void write_rank_files() {
    SafetensorsWriter writer;
    nlohmann::json part = {{"rank", rank}, {"tensors", nlohmann::json::object()}};
    const std::string file = rank_file_name(rank);
    std::map<std::string, int> shards_of_key;  // a rank may hold several pieces of a tensor
    std::vector<std::pair<std::string, size_t>> added;  // (key, index in its "shards"), per add()
    for (const ShardedTensor& s : shards) {
      const auto* bytes = static_cast<const std::byte*>(s.data.raw());
      std::span<const std::byte> span(bytes, s.data.nbytes());
      std::vector<int64_t> stored_shape =
          s.region.is_whole_box() ? s.region.extents : std::vector<int64_t>{s.region.numel()};
      // The first piece is stored under the key, later ones under "<key>#<n>" (the index says).
      const int piece = shards_of_key[s.key]++;
      const std::string entry = piece == 0 ? s.key : s.key + "#" + std::to_string(piece);
      writer.add(entry, s.data.dtype(), stored_shape, span);
      nlohmann::json shard = {{"file", file},
                              {"offsets", s.region.offsets},
                              {"extents", s.region.extents}};  // "xxh64" once written
      if (piece > 0) shard["entry"] = entry;
      if (!s.region.is_whole_box())
        shard["flat_range"] = {s.region.flat_begin,
                               s.region.flat_end < 0 ? s.region.box_numel() : s.region.flat_end};
      nlohmann::json& t = part["tensors"][s.key];
      if (t.is_null())
        t = {{"shape", s.global_shape.dims()},
             {"dtype", safetensors_dtype_name(s.data.dtype())},
             {"shards", nlohmann::json::array()}};
      t["shards"].push_back(shard);
      added.emplace_back(s.key, t["shards"].size() - 1);
    }
    writer.set_metadata("format", kFormatName);
    writer.set_metadata("iteration", std::to_string(iteration));
    const std::string path = (temp_dir / file).string();
    // The writer hashes each shard while writing it (every byte is read from memory once).
    const SafetensorsWriter::Checksums sums = writer.write(path);
    for (size_t i = 0; i < added.size(); ++i)
      part["tensors"][added[i].first]["shards"][added[i].second]["xxh64"] =
          checksum_hex(sums.tensors[i]);
    part["file"] = {{"name", file},
                    {"bytes", static_cast<uint64_t>(fs::file_size(path))},
                    {"xxh64", checksum_hex(sums.file)}};
    write_file_atomically((temp_dir / rank_part_name(rank)).string(), part.dump());
    if (options.TEST_fault) options.TEST_fault("rank_written");
  }
};

CheckpointWriter::CheckpointWriter(dist::Communicator* comm) : comm_(comm) {}

CheckpointWriter::~CheckpointWriter() {
  if (pending_ && pending_->thread.joinable()) pending_->thread.join();
}

void CheckpointWriter::save(DeviceContext& ctx, const std::string& root, int64_t iteration,
                            const std::vector<ShardedTensor>& shards,
                            const nlohmann::json& state, const SaveOptions& options) {
  using Clock = std::chrono::steady_clock;
  finalize();
  const auto start = Clock::now();
  auto p = std::make_unique<Pending>();
  p->root = root;
  p->iteration = iteration;
  p->final_dir = p->root / iteration_dir_name(iteration);
  p->temp_dir = p->root / (iteration_dir_name(iteration) + kTempSuffix);
  p->rank = comm_ ? comm_->rank() : 0;
  p->world = comm_ ? comm_->size() : 1;
  p->state = state;
  p->options = options;
  p->ctx = &ctx;

  // Rank 0 prepares a clean temporary directory; everyone learns whether that worked.
  std::exception_ptr prep_error;
  if (p->rank == 0) {
    try {
      make_dirs(p->root);
      remove_all_or_throw(p->temp_dir);  // a crashed earlier attempt
      make_dirs(p->temp_dir);
    } catch (...) {
      prep_error = std::current_exception();
    }
  }
  if (count_failures(comm_, *p->ctx, prep_error != nullptr) > 0) {
    if (prep_error) std::rethrow_exception(prep_error);
    throw Error(ErrorKind::kIo, "checkpoint save to '" + p->temp_dir.string() +
                                    "' failed on rank 0 (see its error)");
  }

  // Snapshot every shard this rank writes into host memory: the staging copy of the same slot
  // of the last save when dtype, shape and kind of memory still match, else a new one.
  size_t slot = 0;
  for (const ShardedTensor& s : shards) {
    if (!s.write) continue;
    s.region.validate(s.global_shape, "checkpoint tensor " + s.key);
    SHARDLM_REQUIRE(s.data.numel() == s.region.numel(), ErrorKind::kInternal,
                    "checkpoint tensor " + s.key + ": " + std::to_string(s.data.numel()) +
                        " elements for shard " + s.region.to_string());
    const bool from_gpu = !s.data.device().is_cpu();
    if (slot == staging_.size()) staging_.emplace_back();
    OwnedTensor& host = staging_[slot++];
    const Tensor& v = host.view();
    if (!v.defined() || v.dtype() != s.data.dtype() || v.shape() != s.data.shape() ||
        host.pinned() != from_gpu)
      host = from_gpu ? OwnedTensor::empty_pinned(s.data.dtype(), s.data.shape())
                      : OwnedTensor::empty(s.data.dtype(), s.data.shape());
    if (!from_gpu) {
      if (s.data.nbytes() > 0) std::memcpy(host.view().raw(), s.data.raw(), s.data.nbytes());
    } else {
      ops::copy(ctx, host.view(), s.data);
    }
    ShardedTensor copy = s;
    copy.data = host.view();
    p->shards.push_back(std::move(copy));
  }
  staging_.resize(slot);  // fewer shards than last time: release the rest

  Pending* raw = p.get();
  auto work = [raw] {
    const auto t0 = Clock::now();
    try {
      raw->write_rank_files();
    } catch (...) {
      raw->error = std::current_exception();
    }
    raw->write_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  };
  pending_ = std::move(p);
  if (options.async) {
    pending_->thread = std::thread(work);
    last_blocking_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  } else {
    work();
    finalize();
    last_blocking_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  }
}

int64_t CheckpointWriter::finalize() {
  if (!pending_) return -1;
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->thread.joinable()) p->thread.join();
  last_write_seconds_ = p->write_seconds;
  // Every rank's part must be on disk before rank 0 publishes.
  const int failed_writes = count_failures(comm_, *p->ctx, p->error != nullptr);
  if (failed_writes > 0) {
    if (p->error) {
      throw Error(ErrorKind::kIo, "checkpoint iteration " + std::to_string(p->iteration) +
                                      " was not saved (rank " + std::to_string(p->rank) +
                                      "): " + message_of(p->error) +
                                      "; the previous checkpoint is untouched");
    }
    throw Error(ErrorKind::kIo, "checkpoint iteration " + std::to_string(p->iteration) +
                                    " was not saved: " + std::to_string(failed_writes) +
                                    " rank(s) failed to write their part (see their errors); "
                                    "the previous checkpoint is untouched");
  }
  std::exception_ptr publish_error;
  if (p->rank == 0) {
    try {
      publish(*p);
    } catch (...) {
      publish_error = std::current_exception();
    }
  }
  if (count_failures(comm_, *p->ctx, publish_error != nullptr) > 0) {
    if (publish_error) std::rethrow_exception(publish_error);
    throw Error(ErrorKind::kIo, "checkpoint iteration " + std::to_string(p->iteration) +
                                    " could not be published by rank 0 (see its error)");
  }
  return p->iteration;
}

void CheckpointWriter::publish(Pending& p) {
  nlohmann::json meta = {{"format", kFormatName},
                         {"version", kFormatVersion},
                         {"iteration", p.iteration},
                         {"world_size", p.world},
                         {"files", nlohmann::json::object()},
                         {"tensors", nlohmann::json::object()},
                         {"state", p.state}};
  for (int r = 0; r < p.world; ++r) {
    const std::string part_path = (p.temp_dir / rank_part_name(r)).string();
    nlohmann::json part = nlohmann::json::parse(read_text(part_path), nullptr, false);
    if (part.is_discarded())
      throw Error(ErrorKind::kCorruptData, "checkpoint index part '" + part_path +
                                               "' is not valid JSON");
    meta["files"][part["file"]["name"].get<std::string>()] = {
        {"bytes", part["file"]["bytes"]}, {"xxh64", part["file"]["xxh64"]}};
    for (auto it = part["tensors"].begin(); it != part["tensors"].end(); ++it) {
      nlohmann::json& t = meta["tensors"][it.key()];
      if (t.is_null()) {
        t = {{"shape", it.value()["shape"]},
             {"dtype", it.value()["dtype"]},
             {"shards", nlohmann::json::array()}};
      } else {
        SHARDLM_REQUIRE(t["shape"] == it.value()["shape"] && t["dtype"] == it.value()["dtype"],
                        ErrorKind::kInternal,
                        "checkpoint tensor " + it.key() + ": ranks disagree on its global shape "
                        "or dtype (" + t["shape"].dump() + " " + t["dtype"].dump() + " vs " +
                        it.value()["shape"].dump() + " " + it.value()["dtype"].dump() + ")");
      }
      for (const nlohmann::json& shard : it.value()["shards"]) t["shards"].push_back(shard);
    }
  }
  write_file_atomically((p.temp_dir / kMetadataFileName).string(), meta.dump(1));
  for (int r = 0; r < p.world; ++r) fs::remove(p.temp_dir / rank_part_name(r));
  fsync_path(p.temp_dir.string());
  if (p.options.TEST_fault) p.options.TEST_fault("before_publish");

  // Publish: a same-iteration checkpoint is moved aside first and deleted only afterwards.
  const fs::path replaced = p.root / (iteration_dir_name(p.iteration) + kReplacedSuffix);
  std::error_code ec;
  const bool had_old = fs::exists(p.final_dir);
  if (had_old) {
    remove_all_or_throw(replaced);
    fs::rename(p.final_dir, replaced, ec);
    if (ec)
      throw Error(ErrorKind::kIo, "cannot move '" + p.final_dir.string() + "' aside: " +
                                      ec.message());
  }
  fs::rename(p.temp_dir, p.final_dir, ec);
  if (ec)
    throw Error(ErrorKind::kIo, "cannot rename '" + p.temp_dir.string() + "' to '" +
                                    p.final_dir.string() + "': " + ec.message());
  fsync_path(p.root.string());
  write_file_atomically((p.root / kLatestFileName).string(), std::to_string(p.iteration) + "\n");
  fsync_path(p.root.string());
  if (had_old) fs::remove_all(replaced, ec);

  if (p.options.keep_last > 0) {
    auto all = complete_checkpoints(p.root);
    const int64_t excess = static_cast<int64_t>(all.size()) - p.options.keep_last;
    for (int64_t i = 0; i < excess; ++i) {
      if (all[static_cast<size_t>(i)].first == p.iteration) continue;
      fs::remove_all(all[static_cast<size_t>(i)].second, ec);
    }
  }
}

}  // namespace shardlm::ckpt
