// Helpers for the Hugging Face conversion tests: the fixtures made by
// tools/fixtures/make_hf_fixtures.py (tests/golden/hf/<name>: config.json, model.safetensors,
// input_ids.json, logits.safetensors from transformers in fp32) and the relative error of an
// imported model's logits (a CPU forward of GPTModel in fp32 or fp64) against them, for the
// decoder families and for Megatron-BERT (padding mask, token types, sentence-order logits).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "shardlm/ckpt/detail/convert.h"
#include "shardlm/ckpt/hf_model.h"
#include "shardlm/ckpt/safetensors.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/tensor/arena.h"

namespace shardlm::ckpt::testing {

inline std::filesystem::path hf_fixture(const std::string& name) {
  return std::filesystem::path(SHARDLM_SOURCE_DIR) / "tests/golden/hf" / name;
}

// A synthetic Hugging Face checkpoint: name -> (shape, fp32 values).
using HfTensorMap = std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>;

// Distinct N(0, 0.5) values for every tensor (a mapping mistake moves values, never hides).
inline HfTensorMap random_hf_tensors(const std::map<std::string, std::vector<int64_t>>& shapes,
                                     unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, 0.5f);
  HfTensorMap out;
  for (const auto& [name, shape] : shapes) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> v(static_cast<size_t>(numel));
    for (float& x : v) x = n(g);
    out[name] = {shape, v};
  }
  return out;
}

// dir/model.safetensors (shards = 1) or model-0000k-of-0000n.safetensors + the index.
inline void write_hf_tensors(const std::filesystem::path& dir, const HfTensorMap& tensors,
                             int shards = 1) {
  std::filesystem::create_directories(dir);
  std::vector<SafetensorsWriter> writers(static_cast<size_t>(shards));
  auto file = [&](int k) {
    return shards == 1 ? std::string("model.safetensors")
                       : "model-0000" + std::to_string(k + 1) + "-of-0000" +
                             std::to_string(shards) + ".safetensors";
  };
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", nlohmann::json::object()}};
  int k = 0;
  for (const auto& [name, t] : tensors) {
    const int shard = k++ % shards;
    writers[static_cast<size_t>(shard)].add(
        name, DType::kF32, t.first,
        {reinterpret_cast<const std::byte*>(t.second.data()), t.second.size() * 4});
    index["weight_map"][name] = file(shard);
  }
  for (int s = 0; s < shards; ++s) writers[static_cast<size_t>(s)].write((dir / file(s)).string());
  if (shards > 1) std::ofstream(dir / "model.safetensors.index.json") << index.dump();
}

// Same names, shapes, dtypes and bytes.
inline void expect_same_safetensors(const std::filesystem::path& a_file,
                                    const std::filesystem::path& b_file) {
  SafetensorsReader a(a_file.string()), b(b_file.string());
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (const auto& [name, e] : a.entries()) {
    ASSERT_TRUE(b.contains(name)) << name;
    const SafetensorsEntry& f = b.entry(name);
    EXPECT_EQ(e.shape, f.shape) << name;
    EXPECT_EQ(e.dtype, f.dtype) << name;
    ASSERT_EQ(e.bytes.size(), f.bytes.size()) << name;
    EXPECT_EQ(std::memcmp(e.bytes.data(), f.bytes.data(), e.bytes.size()), 0) << name;
  }
}

// Same parameter names, shapes and values.
inline void expect_same_model_tensors(const HfModel& a, const HfModel& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    const Tensor& u = b.tensors.at(name).view();
    ASSERT_EQ(t.view().shape(), u.shape()) << name;
    EXPECT_EQ(std::memcmp(t.view().raw(), u.raw(), u.nbytes()), 0) << name;
  }
}

// An imported model on the CPU in `dtype` (kF32 or kF64) with its parameters from m.tensors
// and activations for B sequences of T tokens.
struct ImportedModel {
  ImportedModel(const HfModel& m, int64_t B, int64_t T, DType dtype)
      : cfg(with_seq_length(m.config, T)), gpt(cfg) {
    gpt.register_parameters(reg);
    reg.finalize(ctx, dtype, 1);
    gpt.bind(reg);
    for (model::Parameter& p : reg.parameters()) {
      const Tensor& src = m.tensors.at(p.spec.name).view();
      EXPECT_EQ(src.shape(), p.value.shape()) << p.spec.name;
      detail::convert_elements(p.value.raw(), dtype, src.raw(), DType::kF32, src.numel());
    }
    acts = Arena(Device::cpu(), gpt.plan_activation_bytes(dtype, B), "activations");
    gpt.allocate_activations(acts, dtype, B);
  }
  static model::TransformerConfig with_seq_length(model::TransformerConfig c, int64_t T) {
    c.seq_length = T;
    return c;
  }
  // Any tensor of the model's device as doubles.
  std::vector<double> values(const Tensor& t) const {
    std::vector<double> out(static_cast<size_t>(t.numel()));
    detail::convert_elements(out.data(), DType::kF64, t.raw(), t.dtype(), t.numel());
    return out;
  }

  model::TransformerConfig cfg;
  DeviceContext ctx = DeviceContext::cpu();
  model::GPTModel gpt;
  model::ParameterRegistry reg;
  Arena acts;
};

// Accumulates ‖ours − theirs‖² and ‖theirs‖² over chosen elements.
struct RelativeError {
  double diff = 0, norm = 0;
  void add(double ours, double theirs) {
    diff += (ours - theirs) * (ours - theirs);
    norm += theirs * theirs;
  }
  double value() const {
    EXPECT_GT(norm, 0.0);
    return std::sqrt(diff / norm);  // NaN when a logit is NaN: never below a tolerance
  }
};

inline nlohmann::json read_fixture_inputs(const std::filesystem::path& fixture) {
  nlohmann::json j;
  std::ifstream(fixture / "input_ids.json") >> j;
  return j;
}

// [B, T] int32 from a JSON array of rows.
inline OwnedTensor int_rows(const std::vector<std::vector<int32_t>>& rows) {
  const int64_t B = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(rows[0].size());
  OwnedTensor out = OwnedTensor::empty(DType::kI32, {B, T});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) out.view().data<int32_t>()[b * T + t] = rows[b][t];
  return out;
}

// An fp32 [B, T, V] (or [B, 2]) tensor of the fixture's logits.safetensors.
inline const float* fixture_logits(const SafetensorsReader& ref, const std::string& name,
                                   const std::vector<int64_t>& shape) {
  const SafetensorsEntry& e = ref.entry(name);
  EXPECT_EQ(e.shape, shape) << name;
  return reinterpret_cast<const float*>(e.bytes.data());
}

// ‖ours − transformers‖ / ‖transformers‖ over the fixture's [B, T, V] logits (the padded
// vocabulary columns are not compared). `dtype`: kF32 or kF64 for the model and activations.
inline double logits_error_vs_fixture(const HfModel& m, const std::filesystem::path& fixture,
                                      DType dtype) {
  const auto ids = read_fixture_inputs(fixture).at("input_ids")
                       .get<std::vector<std::vector<int32_t>>>();
  const int64_t B = static_cast<int64_t>(ids.size()), T = static_cast<int64_t>(ids[0].size());
  ImportedModel im(m, B, T, dtype);
  OwnedTensor tokens = int_rows(ids);
  OwnedTensor targets = OwnedTensor::zeros(DType::kI32, {B, T});
  const std::vector<double> ones(static_cast<size_t>(B * T), 1.0);
  OwnedTensor mask = OwnedTensor::empty(dtype, {B, T});
  detail::convert_elements(mask.view().raw(), dtype, ones.data(), DType::kF64, B * T);
  model::StepContext step{im.ctx, 1, 0, 0, false};
  im.gpt.forward(step, {tokens.view(), targets.view(), mask.view(), static_cast<double>(B * T)});

  SafetensorsReader ref((fixture / "logits.safetensors").string());
  const int64_t V = m.config.vocab_size, Vp = im.cfg.padded_vocab_size();
  const float* hf = fixture_logits(ref, "logits", {B, T, V});
  const std::vector<double> ours = im.values(im.gpt.logits());
  RelativeError err;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t v = 0; v < V; ++v) err.add(ours[static_cast<size_t>(n * Vp + v)], hf[n * V + v]);
  return err.value();
}

// A Megatron-BERT fixture (input_ids.json also holds token_type_ids and an attention_mask that
// is a prefix of ones per sequence; logits.safetensors "prediction_logits" [B, T, V] and
// "seq_relationship_logits" [B, 2]): the relative errors of the imported model's prediction
// logits over the real (unpadded) positions and of its sentence-order logits.
struct BertLogitsErrors {
  double prediction = 0, seq_relationship = 0;
};
inline BertLogitsErrors bert_logits_errors_vs_fixture(const HfModel& m,
                                                      const std::filesystem::path& fixture,
                                                      DType dtype) {
  using Rows = std::vector<std::vector<int32_t>>;
  const nlohmann::json in = read_fixture_inputs(fixture);
  const Rows ids = in.at("input_ids").get<Rows>();
  const Rows attention = in.at("attention_mask").get<Rows>();
  const int64_t B = static_cast<int64_t>(ids.size()), T = static_cast<int64_t>(ids[0].size());
  ImportedModel im(m, B, T, dtype);
  OwnedTensor tokens = int_rows(ids), types = int_rows(in.at("token_type_ids").get<Rows>());
  OwnedTensor targets = OwnedTensor::zeros(DType::kI32, {B, T});
  OwnedTensor lengths = OwnedTensor::empty(DType::kI32, {B});
  OwnedTensor order = OwnedTensor::zeros(DType::kI32, {B});
  std::vector<double> valid(static_cast<size_t>(B * T), 0.0);
  double mask_sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    int32_t len = 0;
    while (len < T && attention[b][len] == 1) ++len;
    for (int64_t t = len; t < T; ++t) EXPECT_EQ(attention[b][t], 0) << "not a prefix mask";
    lengths.view().data<int32_t>()[b] = len;
    for (int64_t t = 0; t < len; ++t) valid[static_cast<size_t>(b * T + t)] = 1.0;
    mask_sum += len;
  }
  OwnedTensor mask = OwnedTensor::empty(dtype, {B, T});
  detail::convert_elements(mask.view().raw(), dtype, valid.data(), DType::kF64, B * T);
  model::Batch batch{tokens.view(), targets.view(), mask.view(), mask_sum};
  batch.key_lengths = lengths.view();
  if (m.config.has_binary_head()) {
    batch.token_types = types.view();
    batch.sentence_order = order.view();
  }
  model::StepContext step{im.ctx, 1, 0, 0, false};
  im.gpt.forward(step, batch);

  SafetensorsReader ref((fixture / "logits.safetensors").string());
  const int64_t V = m.config.vocab_size, Vp = im.cfg.padded_vocab_size();
  const float* hf = fixture_logits(ref, "prediction_logits", {B, T, V});
  const std::vector<double> ours = im.values(im.gpt.logits());
  RelativeError lm, sop;
  for (int64_t n = 0; n < B * T; ++n)
    if (valid[static_cast<size_t>(n)] != 0.0)  // padded positions are garbage on both sides
      for (int64_t v = 0; v < V; ++v) lm.add(ours[static_cast<size_t>(n * Vp + v)], hf[n * V + v]);
  BertLogitsErrors out;
  out.prediction = lm.value();
  if (m.config.has_binary_head()) {
    const float* hf_sop = fixture_logits(ref, "seq_relationship_logits", {B, 2});
    const std::vector<double> ours_sop = im.values(im.gpt.sop_logits());
    for (int64_t k = 0; k < B * 2; ++k) sop.add(ours_sop[static_cast<size_t>(k)], hf_sop[k]);
    out.seq_relationship = sop.value();
  }
  return out;
}

}  // namespace shardlm::ckpt::testing
