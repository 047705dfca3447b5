// The Hugging Face side shared by the family converters (hf_gpt2, hf_llama, hf_bert): config.json,
// the tensors of model.safetensors or of a sharded model.safetensors.index.json, writing an
// exported directory, and the layout moves every family needs (vocabulary padding, transposes,
// Megatron's grouped QKV rows). All tensors here are fp32 on the host.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "shardlm/ckpt/safetensors.h"
#include "shardlm/model/transformer_config.h"
#include "shardlm/tensor/tensor.h"

namespace shardlm::ckpt::detail {

// Parses a JSON file; throws kIo (unreadable) or kCorruptData (not JSON) naming it.
nlohmann::json read_json_file(const std::filesystem::path& path);

// Every tensor of a Hugging Face checkpoint directory, by name. `family` ("GPT-2", "Llama")
// only words the error messages.
class HfTensors {
 public:
  HfTensors(const std::filesystem::path& dir, std::string family);
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  // The tensor as fp32 with the given shape; throws kCorruptData when absent or shaped otherwise.
  OwnedTensor get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;

 private:
  void add_file(const std::filesystem::path& path);
  std::string family_;
  std::vector<std::unique_ptr<SafetensorsReader>> files_;
  std::map<std::string, const SafetensorsReader*> where_;
};

// Writes `tensors` (fp32, in order) as out_dir/model.safetensors and `config` as
// out_dir/config.json, creating out_dir. Throws kIo.
void write_hf_dir(const std::string& out_dir,
                  const std::vector<std::pair<std::string, OwnedTensor>>& tensors,
                  const nlohmann::json& config);

// tensors[name]; throws kCorruptData naming the parameter when the checkpoint lacks it.
const Tensor& parameter(const std::map<std::string, OwnedTensor>& tensors,
                        const std::string& name);

OwnedTensor copy_of(const Tensor& t);
OwnedTensor transpose(const Tensor& t);  // [R, K] -> [K, R]
// [R, K] -> [rows, K] (or [R] -> [rows]): the first `rows` rows, then zero rows (Megatron's
// vocabulary padding: rows >= R are never produced by the tokenizer).
OwnedTensor resize_rows(const Tensor& t, int64_t rows);
// [a ; b ; ...] along rows: weights [R_i, K] (equal K) or vectors [R_i].
OwnedTensor stack_rows(std::initializer_list<const Tensor*> parts);
// Rows [begin, begin + n) of a [R, K] weight or [R] vector.
OwnedTensor row_block(const Tensor& t, int64_t begin, int64_t n);

// The fused QKV rows (weight [R, C] or bias [R]) between Hugging Face's order [q all heads |
// k all groups | v all groups] and Megatron's grouped order [q_g (NH/G heads) | k_g | v_g] per
// query group g, which tensor parallelism splits into contiguous blocks.
OwnedTensor qkv_rows_from_hf(const Tensor& hf, const model::TransformerConfig& cfg);
OwnedTensor qkv_rows_to_hf(const Tensor& ours, const model::TransformerConfig& cfg);

// "decoder.layers.<i>." (ShardLM's layer prefix).
std::string layer_prefix(int64_t i);

}  // namespace shardlm::ckpt::detail
