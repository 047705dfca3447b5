#include "shardlm/train/batch_staging.h"

#include <string>
#include <vector>

#include "shardlm/base/check.h"
#include "shardlm/data/bert_dataset.h"
#include "shardlm/ops/ops.h"
#include "shardlm/tensor/dtype.h"

namespace shardlm::train {

namespace {
// Element i of a loss mask in the activation dtype.
void store_mask(const Tensor& mask, int64_t i, float value) {
  switch (mask.dtype()) {
    case DType::kF64: mask.data<double>()[i] = value; break;
    case DType::kBF16: static_cast<uint16_t*>(mask.raw())[i] = float_to_bf16_bits(value); break;
    case DType::kF16: static_cast<uint16_t*>(mask.raw())[i] = float_to_fp16_bits(value); break;
    default: mask.data<float>()[i] = value; break;
  }
}
}  // namespace

BatchStaging::BatchStaging(DeviceContext& device, DType mask_dtype, int64_t micro_batch,
                           int64_t seq_length, const model::ContextParallel& cp,
                           int64_t vocab_size, bool masked_lm)
    : device_(device),
      micro_batch_(micro_batch),
      seq_length_(seq_length),
      vocab_size_(vocab_size),
      cp_(cp) {
  const int64_t B = micro_batch, TL = cp.local_length(seq_length);
  auto allocate = [&](Buffers& b, Device where) {
    // Host staging starts zeroed (the token types' padding); device buffers are copied over.
    auto make = [&](DType dtype, const Shape& shape) {
      return where.is_cpu() ? OwnedTensor::zeros(dtype, shape) : OwnedTensor::empty(dtype, shape, where);
    };
    b.tokens = make(DType::kI32, {B, TL});
    b.targets = make(DType::kI32, {B, TL});
    b.mask = make(mask_dtype, {B, TL});
    if (!masked_lm) return;
    b.token_types = make(DType::kI32, {B, TL});
    b.lengths = make(DType::kI32, {B});
    b.order = make(DType::kI32, {B});
  };
  allocate(host_, Device::cpu());
  if (!device.device().is_cpu()) allocate(device_buffers_, device.device());
}

model::Batch BatchStaging::Buffers::batch(double mask_sum) const {
  model::Batch b{tokens.view(), targets.view(), mask.view(), mask_sum};
  if (lengths.view().defined()) {
    b.token_types = token_types.view();
    b.key_lengths = lengths.view();
    b.sentence_order = order.view();
  }
  return b;
}

model::Batch BatchStaging::load(const data::SampleSource& source,
                                std::span<const int64_t> sample_indices) {
  SHARDLM_REQUIRE(static_cast<int64_t>(sample_indices.size()) == micro_batch_,
                  ErrorKind::kInternal,
                  "load_batch: " + std::to_string(sample_indices.size()) +
                      " sample indices for a micro-batch of " + std::to_string(micro_batch_));
  const data::BertSampleSource* bert = source.masked_lm();
  SHARDLM_REQUIRE((bert != nullptr) == host_.lengths.view().defined(), ErrorKind::kInternal,
                  "load_batch: a masked-LM source needs BERT's staging and only it has it");
  const double mask_sum =
      bert ? stage_masked_lm(*bert, sample_indices) : stage_windows(source, sample_indices);
  if (device_.device().is_cpu()) return host_.batch(mask_sum);
  for (auto [dev, host] : {std::pair{&device_buffers_.tokens, &host_.tokens},
                           {&device_buffers_.targets, &host_.targets},
                           {&device_buffers_.mask, &host_.mask},
                           {&device_buffers_.token_types, &host_.token_types},
                           {&device_buffers_.lengths, &host_.lengths},
                           {&device_buffers_.order, &host_.order}})
    if (host->view().defined()) ops::copy(device_, dev->view(), host->view());
  return device_buffers_.batch(mask_sum);
}

double BatchStaging::stage_windows(const data::SampleSource& source,
                                   std::span<const int64_t> indices) {
  const int64_t B = micro_batch_, T = seq_length_, TL = cp_.local_length(T);
  std::vector<int32_t> sample(T + 1);
  std::vector<float> mask(T);
  // The loss is a mean over the whole micro-batch: under CP each rank divides its positions'
  // sum by the mask sum of the whole sequences, and the ranks' parts add up.
  double mask_sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t index = indices[static_cast<size_t>(b)];
    source.get(index % source.size(), sample, mask);
    for (int64_t t = 0; t < T; ++t) {
      SHARDLM_REQUIRE(sample[t] >= 0 && sample[t] < vocab_size_ && sample[t + 1] >= 0 &&
                          sample[t + 1] < vocab_size_,
                      ErrorKind::kCorruptData,
                      "sample " + std::to_string(index) + " holds token id " +
                          std::to_string(sample[t]) + " outside the vocabulary of size " +
                          std::to_string(vocab_size_) +
                          "; check --vocab-size / --tokenizer-type against the data");
      mask_sum += mask[t];
    }
    for (int64_t l = 0; l < TL; ++l) {
      const int64_t t = cp_.global_position(l, T), i = b * TL + l;
      host_.tokens.view().data<int32_t>()[i] = sample[t];
      host_.targets.view().data<int32_t>()[i] = sample[t + 1];
      store_mask(host_.mask.view(), i, mask[t]);
    }
  }
  return mask_sum;
}

double BatchStaging::stage_masked_lm(const data::BertSampleSource& source,
                                     std::span<const int64_t> indices) {
  const int64_t B = micro_batch_, T = seq_length_;  // BERT has no context parallelism
  std::vector<int32_t> tokens(T), types(T), labels(T);
  std::vector<float> mask(T);
  double mask_sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t index = indices[static_cast<size_t>(b)];
    data::BertSampleView view{tokens, types, labels, mask};
    source.get(index % source.size(), view);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      SHARDLM_REQUIRE(tokens[t] >= 0 && tokens[t] < vocab_size_ && labels[t] < vocab_size_,
                      ErrorKind::kCorruptData,
                      "BERT sample " + std::to_string(index) + " holds token id " +
                          std::to_string(tokens[t]) + " (label " + std::to_string(labels[t]) +
                          ") outside the vocabulary of size " + std::to_string(vocab_size_) +
                          "; check --vocab-size / --tokenizer-type against the data");
      host_.tokens.view().data<int32_t>()[i] = tokens[t];
      // Unmasked positions have no label (-1): any valid id, left out by the loss mask.
      host_.targets.view().data<int32_t>()[i] = labels[t] >= 0 ? labels[t] : 0;
      host_.token_types.view().data<int32_t>()[i] = types[t];
      store_mask(host_.mask.view(), i, mask[t]);
      mask_sum += mask[t];
    }
    host_.lengths.view().data<int32_t>()[b] = view.length;
    host_.order.view().data<int32_t>()[b] = view.sentence_order;
  }
  return mask_sum;
}

}  // namespace shardlm::train
