// CheckpointWriter + CheckpointReader: layout on disk, resharding between rank counts and split
// axes (N ranks as threads), async saves, atomic publication under injected failures,
// --keep-last-checkpoints, and every corruption case with an error naming file and tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "ckpt_test_util.h"
#include "shardlm/base/error.h"
#include "shardlm/ckpt/checkpoint_reader.h"
#include "shardlm/ckpt/checkpoint_writer.h"
#include "shardlm/ckpt/format.h"
#include "shardlm/dist/thread_communicator.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt {
namespace {

using testing::TempDir;

// Value of global element g of tensor `key` (distinct per tensor, never zero).
float value_of(const std::string& key, int64_t g) {
  return static_cast<float>(std::hash<std::string>{}(key) % 97) + 0.001f * static_cast<float>(g) +
         0.5f;
}

// Global row-major index of local element k of a region.
int64_t global_index(const ShardRegion& r, const Shape& shape, int64_t k) {
  int64_t pos = r.flat_begin + k, g = 0;
  std::vector<int64_t> coord(r.extents.size());
  for (int a = static_cast<int>(r.extents.size()) - 1; a >= 0; --a) {
    coord[a] = pos % r.extents[a] + r.offsets[a];
    pos /= r.extents[a];
  }
  for (size_t a = 0; a < coord.size(); ++a) g = g * shape[static_cast<int>(a)] + coord[a];
  return g;
}

// Block `part` of `parts` along `axis` of the whole tensor.
ShardRegion block(const Shape& shape, int axis, int part, int parts) {
  ShardRegion r = ShardRegion::whole(shape);
  r.extents[axis] = shape[axis] / parts;
  r.offsets[axis] = part * r.extents[axis];
  return r;
}

// Flat part `part` of `parts` (uneven) of the whole tensor: a distributed-optimizer shard.
ShardRegion flat_part(const Shape& shape, int part, int parts) {
  const int64_t n = shape.numel();
  return narrowed(ShardRegion::whole(shape), n * part / parts, n * (part + 1) / parts);
}

struct Shard {
  ShardedTensor meta;
  OwnedTensor owner;
};

Shard make_shard(const std::string& key, const Shape& shape, const ShardRegion& region,
                 bool fill = true, DType dtype = DType::kF32) {
  Shard s;
  s.owner = OwnedTensor::zeros(dtype, {region.numel()});
  if (fill)
    for (int64_t k = 0; k < region.numel(); ++k)
      s.owner.view().data<float>()[k] = value_of(key, global_index(region, shape, k));
  s.meta = {key, shape, region, s.owner.view(), true};
  return s;
}

void expect_values(const Shard& s) {
  for (int64_t k = 0; k < s.meta.region.numel(); ++k)
    ASSERT_EQ(s.owner.view().data<float>()[k],
              value_of(s.meta.key, global_index(s.meta.region, s.meta.global_shape, k)))
        << s.meta.key << " " << s.meta.region.to_string() << " element " << k;
}

const Shape kA{8, 6}, kB{4, 12}, kC{5}, kD{5, 3};

// The shards rank r of n saves: A split on axis 0, B on axis 1, C replicated (rank 0 writes),
// D as uneven flat parts (distributed-optimizer style).
std::vector<Shard> saved_layout(int r, int n) {
  std::vector<Shard> out;
  out.push_back(make_shard("model/a", kA, block(kA, 0, r, n)));
  out.push_back(make_shard("model/b", kB, block(kB, 1, r, n)));
  out.push_back(make_shard("model/c", kC, ShardRegion::whole(kC)));
  out.back().meta.write = r == 0;
  out.push_back(make_shard("optim/exp_avg/d", kD, flat_part(kD, r, n)));
  return out;
}

std::vector<ShardedTensor> metas(const std::vector<Shard>& shards) {
  std::vector<ShardedTensor> out;
  for (const Shard& s : shards) out.push_back(s.meta);
  return out;
}

void save_with_ranks(const std::string& root, int64_t iteration, int n) {
  dist::ThreadWorld world(n, {.timeout = std::chrono::seconds(20)});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext ctx = DeviceContext::cpu();
    std::vector<Shard> shards = saved_layout(comm.rank(), n);
    CheckpointWriter writer(&comm);
    writer.save(ctx, root, iteration, metas(shards), {{"iteration", iteration}});
  }));
}

TEST(Checkpoint, SingleRankLayoutAndRoundTrip) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<Shard> shards = saved_layout(0, 1);
  CheckpointWriter writer(nullptr);
  writer.save(ctx, dir.str(), 10, metas(shards), {{"iteration", 10}, {"note", "x"}});
  EXPECT_EQ(testing::slurp(dir.path() / kLatestFileName), "10\n");
  EXPECT_TRUE(fs::exists(dir.path() / "iter_0000010" / kMetadataFileName));
  EXPECT_TRUE(fs::exists(dir.path() / "iter_0000010" / "rank_00000.safetensors"));
  EXPECT_FALSE(fs::exists(dir.path() / "iter_0000010.tmp"));
  EXPECT_FALSE(fs::exists(dir.path() / "iter_0000010" / "rank_00000.json"));

  ASSERT_EQ(CheckpointReader::latest_iteration(dir.str()), 10);
  CheckpointReader reader(dir.str(), 10);
  reader.verify_files();
  EXPECT_EQ(reader.state()["note"], "x");
  EXPECT_EQ(reader.global_shape("model/b"), kB);
  for (const Shard& s : saved_layout(0, 1)) {
    Shard target = make_shard(s.meta.key, s.meta.global_shape, s.meta.region, false);
    reader.read(ctx, target.meta);
    expect_values(target);
  }
  // fp32 in the file, fp64 in the target: converted.
  OwnedTensor f64 = OwnedTensor::zeros(DType::kF64, {kC.numel()});
  reader.read(ctx, {"model/c", kC, ShardRegion::whole(kC), f64.view()});
  EXPECT_EQ(f64.view().data<double>()[3], static_cast<double>(value_of("model/c", 3)));
}

// Shards larger than the writer's 8 MiB slices, two pieces of one tensor on one rank (stored as
// "<key>" and "<key>#1"): every shard's recorded XXH64 (computed while writing) verifies.
TEST(Checkpoint, ShardsSpanningWriteSlicesVerify) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  const Shape big{3, 1400003};  // 16.8 MB of fp32; each half is just over 8 MiB
  std::vector<Shard> shards;
  shards.push_back(make_shard("model/big", big, flat_part(big, 1, 2)));
  shards.push_back(make_shard("model/c", kC, ShardRegion::whole(kC)));
  shards.push_back(make_shard("model/big", big, flat_part(big, 0, 2)));
  CheckpointWriter writer(nullptr);
  writer.save(ctx, dir.str(), 3, metas(shards), {{"iteration", 3}});

  CheckpointReader reader(dir.str(), 3);
  reader.verify_files();
  EXPECT_EQ(reader.metadata()["tensors"]["model/big"]["shards"].size(), 2u);
  for (const Shard& s : shards) {
    Shard target = make_shard(s.meta.key, s.meta.global_shape, s.meta.region, false);
    reader.read(ctx, target.meta);  // checks the shard's XXH64
    expect_values(target);
  }
  Shard whole = make_shard("model/big", big, ShardRegion::whole(big), false);
  reader.read(ctx, whole.meta);
  expect_values(whole);
}

// Saved by 2 ranks, loaded by 1, 3 and 4 ranks along other axes and other flat cuts.
TEST(Checkpoint, ReshardsBetweenRankCountsAxesAndFlatRanges) {
  TempDir dir;
  save_with_ranks(dir.str(), 4, 2);
  CheckpointReader probe(dir.str(), 4);
  EXPECT_EQ(probe.metadata()["tensors"]["model/c"]["shards"].size(), 1u);  // replica written once
  EXPECT_EQ(probe.metadata()["tensors"]["model/a"]["shards"].size(), 2u);
  for (int n : {1, 3, 4}) {
    dist::ThreadWorld world(n, {.timeout = std::chrono::seconds(20)});
    dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
      const int r = comm.rank();
      DeviceContext ctx = DeviceContext::cpu();
      CheckpointReader reader(dir.str(), 4);
      std::vector<Shard> targets;
      targets.push_back(make_shard("model/a", kA, n == 3 ? block(kA, 1, r, n) : block(kA, 0, r, n), false));
      targets.push_back(make_shard("model/b", kB, n == 3 ? block(kB, 1, r, n) : block(kB, 0, r, n), false));
      targets.push_back(make_shard("model/c", kC, ShardRegion::whole(kC), false));
      targets.push_back(make_shard("optim/exp_avg/d", kD, flat_part(kD, r, n), false));
      // A box target of the flat-saved tensor, and a flat target of the box-saved tensor.
      targets.push_back(make_shard("optim/exp_avg/d", kD, block(kD, 1, r % 3, 3), false));
      targets.push_back(make_shard("model/a", kA, flat_part(kA, r, n), false));
      for (Shard& t : targets) {
        reader.read(ctx, t.meta);
        expect_values(t);
      }
    }));
  }
}

TEST(Checkpoint, AsyncSaveSnapshotsThenPublishesOnFinalize) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<Shard> shards = saved_layout(0, 1);
  CheckpointWriter writer(nullptr);
  writer.save(ctx, dir.str(), 3, metas(shards), {{"iteration", 3}}, {.async = true});
  EXPECT_TRUE(writer.pending());
  // Training goes on and changes the parameters: the checkpoint keeps the snapshot.
  for (Shard& s : shards)
    for (int64_t k = 0; k < s.meta.region.numel(); ++k) s.owner.view().data<float>()[k] = -7.0f;
  EXPECT_FALSE(CheckpointReader::latest_iteration(dir.str()).has_value());  // not yet published
  writer.finalize();
  EXPECT_FALSE(writer.pending());
  ASSERT_EQ(CheckpointReader::latest_iteration(dir.str()), 3);
  CheckpointReader reader(dir.str(), 3);
  reader.verify_files();
  for (const Shard& s : saved_layout(0, 1)) {
    Shard target = make_shard(s.meta.key, s.meta.global_shape, s.meta.region, false);
    reader.read(ctx, target.meta);
    expect_values(target);
  }
  // The next save finalizes a pending one first (two async saves in a row, 2 ranks).
  dist::ThreadWorld world(2, {.timeout = std::chrono::seconds(20)});
  dist::rethrow_first_error(world.run([&](dist::Communicator& comm) {
    DeviceContext c = DeviceContext::cpu();
    std::vector<Shard> mine = saved_layout(comm.rank(), 2);
    CheckpointWriter w(&comm);
    w.save(c, dir.str(), 5, metas(mine), {{"iteration", 5}}, {.async = true});
    w.save(c, dir.str(), 6, metas(mine), {{"iteration", 6}}, {.async = true});
    w.finalize();
  }));
  EXPECT_EQ(CheckpointReader::latest_iteration(dir.str()), 6);
  CheckpointReader(dir.str(), 5).verify_files();
  CheckpointReader(dir.str(), 6).verify_files();
}

// The writer keeps its host staging copies from one save to the next: a second save into the
// same buffers must not reach the first checkpoint's files, must write its own values, and a
// save with fewer shards must not write stale ones.
TEST(Checkpoint, ReusedStagingCopiesHoldEachSavesOwnValues) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<Shard> shards = saved_layout(0, 1);
  CheckpointWriter writer(nullptr);
  writer.save(ctx, dir.str(), 3, metas(shards), {{"iteration", 3}}, {.async = true});
  for (Shard& s : shards)
    for (int64_t k = 0; k < s.meta.region.numel(); ++k) s.owner.view().data<float>()[k] = -7.0f;
  writer.save(ctx, dir.str(), 4, metas(shards), {{"iteration", 4}}, {.async = true});
  std::vector<ShardedTensor> fewer = metas(shards);
  fewer.resize(1);
  writer.save(ctx, dir.str(), 5, fewer, {{"iteration", 5}}, {.async = false});
  for (const Shard& s : saved_layout(0, 1)) {
    Shard target = make_shard(s.meta.key, s.meta.global_shape, s.meta.region, false);
    CheckpointReader(dir.str(), 3).read(ctx, target.meta);
    expect_values(target);
    CheckpointReader(dir.str(), 4).read(ctx, target.meta);
    for (int64_t k = 0; k < target.meta.region.numel(); ++k)
      ASSERT_EQ(target.owner.view().data<float>()[k], -7.0f) << s.meta.key << " " << k;
  }
  CheckpointReader five(dir.str(), 5);
  five.verify_files();
  Shard first = make_shard(fewer[0].key, fewer[0].global_shape, fewer[0].region, false);
  five.read(ctx, first.meta);
  EXPECT_EQ(first.owner.view().data<float>()[0], -7.0f);
  Shard second = make_shard(shards[1].meta.key, shards[1].meta.global_shape,
                            shards[1].meta.region, false);
  EXPECT_THROW(five.read(ctx, second.meta), Error);  // not in the smaller checkpoint
}

TEST(Checkpoint, FailedSaveLeavesThePreviousCheckpointUntouched) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<Shard> shards = saved_layout(0, 1);
  CheckpointWriter writer(nullptr);
  writer.save(ctx, dir.str(), 5, metas(shards), {{"iteration", 5}});
  const std::string before = testing::slurp(dir.path() / "iter_0000005" / "rank_00000.safetensors");
  for (const char* stage : {"rank_written", "before_publish"}) {
    SaveOptions opts;
    opts.TEST_fault = [stage](const std::string& s) {
      if (s == stage) throw Error(ErrorKind::kIo, std::string("injected crash at ") + stage);
    };
    for (bool async : {false, true}) {
      opts.async = async;
      try {
        writer.save(ctx, dir.str(), 10, metas(shards), {{"iteration", 10}}, opts);
        writer.finalize();
        ADD_FAILURE() << "save should have failed at " << stage;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("injected crash"), std::string::npos) << e.what();
      }
      EXPECT_EQ(CheckpointReader::latest_iteration(dir.str()), 5);
      EXPECT_FALSE(fs::exists(dir.path() / "iter_0000010"));
      EXPECT_EQ(testing::slurp(dir.path() / "iter_0000005" / "rank_00000.safetensors"), before);
    }
  }
  // Saving the same iteration again replaces it only once the new one is complete.
  writer.save(ctx, dir.str(), 10, metas(shards), {{"iteration", 10}});
  writer.save(ctx, dir.str(), 10, metas(shards), {{"iteration", 10}, {"again", true}});
  EXPECT_FALSE(fs::exists(dir.path() / "iter_0000010.tmp"));  // the stale attempt is gone
  EXPECT_TRUE(CheckpointReader(dir.str(), 10).state()["again"].get<bool>());
  CheckpointReader(dir.str(), 5).verify_files();
}

TEST(Checkpoint, KeepLastRemovesOldOnesOnlyAfterANewOneIsComplete) {
  TempDir dir;
  DeviceContext ctx = DeviceContext::cpu();
  std::vector<Shard> shards = saved_layout(0, 1);
  CheckpointWriter writer(nullptr);
  for (int64_t it = 1; it <= 4; ++it)
    writer.save(ctx, dir.str(), it, metas(shards), {{"iteration", it}}, {.keep_last = 2});
  EXPECT_FALSE(fs::exists(dir.path() / "iter_0000001"));
  EXPECT_FALSE(fs::exists(dir.path() / "iter_0000002"));
  EXPECT_TRUE(fs::exists(dir.path() / "iter_0000003"));
  EXPECT_TRUE(fs::exists(dir.path() / "iter_0000004"));
  // A failed fifth save removes nothing.
  SaveOptions failing{.keep_last = 2};
  failing.TEST_fault = [](const std::string& s) {
    if (s == "before_publish") throw Error(ErrorKind::kIo, "injected");
  };
  EXPECT_THROW(writer.save(ctx, dir.str(), 5, metas(shards), {}, failing), Error);
  EXPECT_TRUE(fs::exists(dir.path() / "iter_0000003"));
  EXPECT_EQ(CheckpointReader::latest_iteration(dir.str()), 4);
}

// --- corruption: each case names the file and the tensor and never loads partially --------

class CorruptCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    DeviceContext ctx = DeviceContext::cpu();
    std::vector<Shard> shards = saved_layout(0, 1);
    CheckpointWriter(nullptr).save(ctx, dir_.str(), 7, metas(shards), {{"iteration", 7}});
    file_ = dir_.path() / "iter_0000007" / "rank_00000.safetensors";
  }
  // Reads every tensor; returns the error (kind and message), or "" if all loaded.
  std::pair<ErrorKind, std::string> load_all() {
    try {
      DeviceContext ctx = DeviceContext::cpu();
      CheckpointReader reader(dir_.str(), 7);
      for (const Shard& s : saved_layout(0, 1)) {
        Shard t = make_shard(s.meta.key, s.meta.global_shape, s.meta.region, false);
        reader.read(ctx, t.meta);
      }
    } catch (const Error& e) {
      return {e.kind(), e.what()};
    }
    return {ErrorKind::kInternal, ""};
  }
  TempDir dir_;
  fs::path file_;
};

TEST_F(CorruptCheckpoint, MissingShardFile) {
  fs::remove(file_);
  auto [kind, msg] = load_all();
  EXPECT_EQ(kind, ErrorKind::kIo);
  EXPECT_NE(msg.find(file_.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
}

TEST_F(CorruptCheckpoint, TruncatedShardFile) {
  fs::resize_file(file_, fs::file_size(file_) - 10);
  auto [kind, msg] = load_all();
  EXPECT_EQ(kind, ErrorKind::kCorruptData);
  EXPECT_NE(msg.find(file_.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST_F(CorruptCheckpoint, ChecksumMismatchNamesFileAndTensor) {
  // The last tensor written is the last one in saved_layout: flip a byte of its data.
  testing::flip_byte_from_end(file_, 3);
  auto [kind, msg] = load_all();
  EXPECT_EQ(kind, ErrorKind::kCorruptData);
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find(file_.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("optim/exp_avg/d"), std::string::npos) << msg;
  EXPECT_THROW(CheckpointReader(dir_.str(), 7).verify_files(), Error);
}

TEST_F(CorruptCheckpoint, DamagedIndexAndLatestFile) {
  {
    std::ofstream(dir_.path() / "iter_0000007" / kMetadataFileName) << "{\"tensors\": [";
  }
  auto [kind, msg] = load_all();
  EXPECT_EQ(kind, ErrorKind::kCorruptData);
  EXPECT_NE(msg.find("metadata.json"), std::string::npos) << msg;
  fs::remove(dir_.path() / "iter_0000007" / kMetadataFileName);
  std::tie(kind, msg) = load_all();
  EXPECT_EQ(kind, ErrorKind::kIo);
  EXPECT_NE(msg.find("incomplete"), std::string::npos) << msg;
  { std::ofstream(dir_.path() / kLatestFileName) << "seven\n"; }
  try {
    CheckpointReader::latest_iteration(dir_.str());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(kLatestFileName), std::string::npos) << e.what();
  }
  EXPECT_FALSE(CheckpointReader::latest_iteration(dir_.str() + "/nowhere").has_value());
}

TEST_F(CorruptCheckpoint, ShapeMismatchAndMissingTensor) {
  DeviceContext ctx = DeviceContext::cpu();
  CheckpointReader reader(dir_.str(), 7);
  Shard wrong = make_shard("model/a", Shape{8, 4}, ShardRegion::whole(Shape{8, 4}), false);
  try {
    reader.read(ctx, wrong.meta);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
    EXPECT_NE(std::string(e.what()).find("'model/a' has global shape [8, 6]"), std::string::npos)
        << e.what();
  }
  Shard absent = make_shard("model/zzz", kC, ShardRegion::whole(kC), false);
  EXPECT_THROW(reader.read(ctx, absent.meta), Error);
  // A differently padded vocabulary: common rows copied, the rest zero.
  Shard taller = make_shard("model/a", Shape{10, 6}, ShardRegion::whole(Shape{10, 6}), false);
  reader.read(ctx, taller.meta, {.allow_shape_mismatch = true});
  for (int64_t k = 0; k < 60; ++k)
    EXPECT_EQ(taller.owner.view().data<float>()[k], k < 48 ? value_of("model/a", k) : 0.0f);
  Shard shorter = make_shard("model/a", Shape{4, 6}, ShardRegion::whole(Shape{4, 6}), false);
  reader.read(ctx, shorter.meta, {.allow_shape_mismatch = true});
  expect_values(shorter);
}

}  // namespace
}  // namespace shardlm::ckpt
