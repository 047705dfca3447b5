// CheckpointWriter: saves one rank's shards of a checkpoint and, together with the other ranks,
// publishes it atomically (docs/formats/checkpoint.md).
//
// save() (collective over the communicator; every rank calls it with its own shards):
//   1. finalize() any earlier asynchronous save;
//   2. rank 0 clears a stale "<root>/iter_N.tmp" left by a crash and creates it; barrier;
//   3. snapshot: every shard this rank writes is copied to host memory (device -> host), so
//      training may change the parameters as soon as save() returns;
//   4. this rank's "rank_RRRRR.safetensors" (+ fsync) and its part of the index
//      "rank_RRRRR.json" (shard regions, per-shard and per-file XXH64) are written into the
//      temporary directory: inline, or by a background thread with SaveOptions::async;
//   5. unless async, finalize().
// finalize() (collective): waits for this rank's writer thread; all ranks agree (all-reduce)
// that every part was written; rank 0 merges the parts into metadata.json, renames
// "iter_N.tmp" -> "iter_N", rewrites latest_checkpointed_iteration.txt (write + rename), then
// deletes checkpoints beyond --keep-last-checkpoints; a final all-reduce tells every rank the
// outcome. A failure anywhere throws on every rank and leaves the previous checkpoints and the
// latest file untouched.
//
// Thread contract: one writer per rank, called from that rank's main thread. With async saves
// the background thread touches only the host snapshot and the file system; the communicator
// is used only by save()/finalize() on the calling thread (its agreement all-reduces run on
// the device of the DeviceContext given to save(), which must outlive the next finalize()). The
// single-rank case needs no communicator (nullptr). The destructor waits for a pending write but
// does not publish it.
//
//   CheckpointWriter writer(comm);   // or nullptr
//   writer.save(ctx, "/ckpts", 10, shards, state_json, {.async = true});
//   ... training continues ...
//   writer.finalize();               // before the next save and before exit
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/ckpt/sharded_tensor.h"
#include "shardlm/dist/communicator.h"
#include "shardlm/tensor/device_context.h"

namespace shardlm::ckpt {

struct SaveOptions {
  bool async = false;
  int64_t keep_last = 0;  // > 0: keep only the newest K complete checkpoints
  // Test seam: called with a stage name ("rank_written" on every rank after its files,
  // "before_publish" on rank 0 before the rename); throwing simulates a crash there.
  std::function<void(const std::string& stage)> TEST_fault;
};

class CheckpointWriter {
 public:
  explicit CheckpointWriter(dist::Communicator* comm = nullptr);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // `state` (training state and config, JSON) is taken from rank 0. Throws Error naming the
  // file on I/O failures.
  void save(DeviceContext& ctx, const std::string& root, int64_t iteration,
            const std::vector<ShardedTensor>& shards, const nlohmann::json& state,
            const SaveOptions& options = {});
  // Publishes the pending save (collective); a no-op when nothing is pending. Returns the
  // iteration it published, or -1 when nothing was pending.
  int64_t finalize();
  bool pending() const { return pending_ != nullptr; }
  // Seconds the last save() blocked the caller (snapshot + synchronous writes).
  double last_blocking_seconds() const { return last_blocking_seconds_; }
  // Seconds this rank spent writing its files for the last published save (on the background
  // thread when async).
  double last_write_seconds() const { return last_write_seconds_; }

 private:
  struct Pending;
  void publish(Pending& p);  // rank 0

  dist::Communicator* comm_;
  std::unique_ptr<Pending> pending_;
  // Host copies of the shards, kept from one save to the next (the shards of a run keep their
  // shapes): GPU shards land in pinned memory at full bus speed, and only the first save pays
  // for allocating and pinning. Free to reuse once finalize() has joined the writer thread.
  std::vector<OwnedTensor> staging_;
  double last_blocking_seconds_ = 0;
  double last_write_seconds_ = 0;
};

// Writes `text` to `path` through "<path>.tmp" + fsync + rename (readers see old or new).
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace shardlm::ckpt
