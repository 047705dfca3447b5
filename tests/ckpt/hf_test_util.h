// Helpers for the Hugging Face conversion tests: the fixtures made by
// tools/fixtures/make_hf_fixtures.py (tests/golden/hf/<name>: config.json, model.safetensors,
// input_ids.json, logits.safetensors from transformers in fp32) and the relative error of an
// imported model's logits (a CPU forward of GPTModel in fp32 or fp64) against them.
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

// ‖ours − transformers‖ / ‖transformers‖ over the fixture's [B, T, V] logits (the padded
// vocabulary columns are not compared). `dtype`: kF32 or kF64 for the model and activations.
inline double logits_error_vs_fixture(const HfModel& m, const std::filesystem::path& fixture,
                                      DType dtype) {
  nlohmann::json ids_json;
  std::ifstream(fixture / "input_ids.json") >> ids_json;
  const auto ids = ids_json.at("input_ids").get<std::vector<std::vector<int32_t>>>();
  const int64_t B = static_cast<int64_t>(ids.size()), T = static_cast<int64_t>(ids[0].size());
  model::TransformerConfig cfg = m.config;
  cfg.seq_length = T;
  DeviceContext ctx = DeviceContext::cpu();
  model::GPTModel gpt(cfg);
  model::ParameterRegistry reg;
  gpt.register_parameters(reg);
  reg.finalize(ctx, dtype, 1);
  gpt.bind(reg);
  for (model::Parameter& p : reg.parameters()) {
    const Tensor& src = m.tensors.at(p.spec.name).view();
    EXPECT_EQ(src.shape(), p.value.shape()) << p.spec.name;
    detail::convert_elements(p.value.raw(), dtype, src.raw(), DType::kF32, src.numel());
  }
  Arena acts(Device::cpu(), gpt.plan_activation_bytes(dtype, B), "activations");
  gpt.allocate_activations(acts, dtype, B);
  OwnedTensor tokens = OwnedTensor::empty(DType::kI32, {B, T});
  OwnedTensor targets = OwnedTensor::zeros(DType::kI32, {B, T});
  std::vector<double> ones(static_cast<size_t>(B * T), 1.0);
  OwnedTensor mask = OwnedTensor::empty(dtype, {B, T});
  detail::convert_elements(mask.view().raw(), dtype, ones.data(), DType::kF64, B * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) tokens.view().data<int32_t>()[b * T + t] = ids[b][t];
  model::StepContext step{ctx, 1, 0, 0, false};
  gpt.forward(step, {tokens.view(), targets.view(), mask.view(), static_cast<double>(B * T)});

  SafetensorsReader ref((fixture / "logits.safetensors").string());
  const SafetensorsEntry& e = ref.entry("logits");
  const int64_t V = m.config.vocab_size, Vp = cfg.padded_vocab_size();
  EXPECT_EQ(e.shape, (std::vector<int64_t>{B, T, V}));
  std::vector<double> ours(static_cast<size_t>(B * T * Vp));
  detail::convert_elements(ours.data(), DType::kF64, gpt.logits().raw(), dtype, B * T * Vp);
  const float* hf = reinterpret_cast<const float*>(e.bytes.data());
  double diff = 0, norm = 0;
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t v = 0; v < V; ++v) {
      const double d = ours[static_cast<size_t>(n * Vp + v)] - hf[n * V + v];
      diff += d * d;
      norm += static_cast<double>(hf[n * V + v]) * hf[n * V + v];
    }
  EXPECT_GT(norm, 0.0);
  return std::sqrt(diff / norm);  // NaN when a logit is NaN: never below a tolerance
}

}  // namespace shardlm::ckpt::testing
