#include "shardlm/ckpt/detail/hf_files.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "shardlm/base/check.h"
#include "shardlm/ckpt/checkpoint_writer.h"
#include "shardlm/ckpt/detail/convert.h"

namespace fs = std::filesystem;

namespace shardlm::ckpt::detail {

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorKind::kIo, "cannot read '" + path.string() + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded())
    throw Error(ErrorKind::kCorruptData, "'" + path.string() + "' is not valid JSON");
  return j;
}

HfTensors::HfTensors(const fs::path& dir, std::string family) : family_(std::move(family)) {
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    add_file(single);
  } else if (fs::exists(index)) {
    const nlohmann::json j = read_json_file(index);
    SHARDLM_REQUIRE(j.contains("weight_map") && j["weight_map"].is_object(),
                    ErrorKind::kCorruptData, "'" + index.string() + "' has no weight_map");
    std::set<std::string> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
      files.insert(it.value().get<std::string>());
    for (const std::string& f : files) add_file(dir / f);
  } else {
    throw Error(ErrorKind::kIo, "'" + dir.string() +
                                    "' has neither model.safetensors nor "
                                    "model.safetensors.index.json (save the model with "
                                    "save_pretrained(..., safe_serialization=True))");
  }
}

void HfTensors::add_file(const fs::path& path) {
  files_.push_back(std::make_unique<SafetensorsReader>(path.string()));
  for (const auto& [name, _] : files_.back()->entries()) where_[name] = files_.back().get();
}

OwnedTensor HfTensors::get(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw Error(ErrorKind::kCorruptData,
                "Hugging Face checkpoint lacks tensor '" + name + "' (expected shape " +
                    Shape(shape).to_string() + "); is it a " + family_ + " model?");
  const SafetensorsEntry& e = it->second->entry(name);
  SHARDLM_REQUIRE(e.shape == shape, ErrorKind::kCorruptData,
                  "'" + it->second->path() + "': tensor '" + name + "' has shape " +
                      Shape(e.shape).to_string() + " but config.json implies " +
                      Shape(shape).to_string());
  OwnedTensor out = OwnedTensor::empty(DType::kF32, Shape(shape));
  convert_elements(out.view().raw(), DType::kF32, e.bytes.data(), e.dtype, e.numel());
  return out;
}

std::vector<std::string> HfTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [n, _] : where_) out.push_back(n);
  return out;
}

void write_hf_dir(const std::string& out_dir,
                  const std::vector<std::pair<std::string, OwnedTensor>>& tensors,
                  const nlohmann::json& config) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create '" + out_dir + "': " + ec.message());
  SafetensorsWriter writer;
  for (const auto& [name, t] : tensors) {
    SHARDLM_CHECK(t.view().dtype() == DType::kF32);
    const auto* p = static_cast<const std::byte*>(t.view().raw());
    writer.add(name, DType::kF32, t.view().shape().dims(), {p, t.view().nbytes()});
  }
  writer.set_metadata("format", "pt");  // transformers refuses files without it
  writer.write((fs::path(out_dir) / "model.safetensors").string());
  write_file_atomically((fs::path(out_dir) / "config.json").string(), config.dump(2) + "\n");
}

const Tensor& parameter(const std::map<std::string, OwnedTensor>& tensors,
                        const std::string& name) {
  auto it = tensors.find(name);
  SHARDLM_REQUIRE(it != tensors.end(), ErrorKind::kCorruptData,
                  "the checkpoint lacks parameter '" + name + "'");
  return it->second.view();
}

OwnedTensor copy_of(const Tensor& t) {
  OwnedTensor o = OwnedTensor::empty(DType::kF32, t.shape());
  std::memcpy(o.view().raw(), t.raw(), t.nbytes());
  return o;
}

OwnedTensor transpose(const Tensor& t) {
  const int64_t R = t.size(0), K = t.size(1);
  OwnedTensor out = OwnedTensor::empty(DType::kF32, {K, R});
  const float* s = t.data<float>();
  float* d = out.view().data<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) d[k * R + r] = s[r * K + k];
  return out;
}

namespace {
// Elements per row: K of a [R, K] weight, 1 of a [R] vector.
int64_t row_length(const Tensor& t) { return t.shape().rank() == 1 ? 1 : t.size(1); }
// t's shape with `rows` rows.
Shape with_rows(const Tensor& t, int64_t rows) {
  return t.shape().rank() == 1 ? Shape({rows}) : Shape({rows, t.size(1)});
}
}  // namespace

OwnedTensor resize_rows(const Tensor& t, int64_t rows) {
  const int64_t K = row_length(t);
  OwnedTensor out = OwnedTensor::zeros(DType::kF32, with_rows(t, rows));
  const int64_t keep = std::min(rows, t.size(0));
  std::memcpy(out.view().raw(), t.raw(), static_cast<size_t>(keep * K) * sizeof(float));
  return out;
}

OwnedTensor stack_rows(std::initializer_list<const Tensor*> parts) {
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    SHARDLM_CHECK_EQ(row_length(*p), row_length(**parts.begin()));
    rows += p->size(0);
  }
  OwnedTensor out = OwnedTensor::empty(DType::kF32, with_rows(**parts.begin(), rows));
  auto* dst = static_cast<std::byte*>(out.view().raw());
  for (const Tensor* p : parts) {
    std::memcpy(dst, p->raw(), p->nbytes());
    dst += p->nbytes();
  }
  return out;
}

OwnedTensor row_block(const Tensor& t, int64_t begin, int64_t n) {
  SHARDLM_CHECK(begin >= 0 && begin + n <= t.size(0));
  const int64_t K = row_length(t);
  OwnedTensor out = OwnedTensor::empty(DType::kF32, with_rows(t, n));
  std::memcpy(out.view().raw(), t.data<float>() + begin * K,
              static_cast<size_t>(n * K) * sizeof(float));
  return out;
}

namespace {
// Megatron row r of the fused QKV output -> its row in HF's [q | k | v] (NH heads, G groups).
int64_t hf_qkv_row(int64_t r, const model::TransformerConfig& c) {
  const int64_t HS = c.head_dim(), NH = c.num_attention_heads, G = c.query_groups();
  const int64_t q_rows = NH / G * HS, per_group = q_rows + 2 * HS;
  const int64_t g = r / per_group, w = r % per_group;
  if (w < q_rows) return g * q_rows + w;                        // query head g*NH/G + w/HS
  if (w < q_rows + HS) return NH * HS + g * HS + (w - q_rows);  // key of group g
  return NH * HS + G * HS + g * HS + (w - q_rows - HS);         // value of group g
}

OwnedTensor permute_qkv_rows(const Tensor& t, const model::TransformerConfig& c, bool from_hf) {
  const int64_t R = c.qkv_size();
  SHARDLM_CHECK_EQ(t.size(0), R);
  const int64_t K = t.shape().rank() == 1 ? 1 : t.size(1);
  OwnedTensor out = OwnedTensor::empty(DType::kF32, t.shape());
  const float* s = t.data<float>();
  float* d = out.view().data<float>();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = hf_qkv_row(r, c);
    const int64_t dst = from_hf ? r : h, src = from_hf ? h : r;
    std::memcpy(d + dst * K, s + src * K, static_cast<size_t>(K) * sizeof(float));
  }
  return out;
}
}  // namespace

OwnedTensor qkv_rows_from_hf(const Tensor& hf, const model::TransformerConfig& cfg) {
  return permute_qkv_rows(hf, cfg, true);
}

OwnedTensor qkv_rows_to_hf(const Tensor& ours, const model::TransformerConfig& cfg) {
  return permute_qkv_rows(ours, cfg, false);
}

std::string layer_prefix(int64_t i) { return "decoder.layers." + std::to_string(i) + "."; }

}  // namespace shardlm::ckpt::detail
