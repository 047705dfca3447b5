#include "shardlm/train/batch_staging.h"

#include <algorithm>
#include <string>
#include <vector>

#include "shardlm/base/check.h"
#include "shardlm/data/bert_dataset.h"
#include "shardlm/data/t5_dataset.h"
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
                           const model::TransformerConfig& model,
                           const model::ContextParallel& cp, int64_t vocab_size)
    : device_(device),
      family_(model.family),
      micro_batch_(micro_batch),
      seq_length_(model.t5() ? model.decoder_seq_length : model.seq_length),
      vocab_size_(vocab_size),
      encoder_seq_length_(model.t5() ? model.seq_length : 0),
      cp_(cp) {
  const int64_t B = micro_batch, TL = cp.local_length(seq_length_);
  auto allocate = [&](Buffers& b, Device where) {
    // Host staging starts zeroed (the token types' padding); device buffers are copied over.
    auto make = [&](DType dtype, const Shape& shape) {
      return where.is_cpu() ? OwnedTensor::zeros(dtype, shape) : OwnedTensor::empty(dtype, shape, where);
    };
    b.tokens = make(DType::kI32, {B, TL});
    b.targets = make(DType::kI32, {B, TL});
    b.mask = make(mask_dtype, {B, TL});
    if (family_ == model::ModelFamily::kBert) {
      b.token_types = make(DType::kI32, {B, TL});
      b.lengths = make(DType::kI32, {B});
      b.order = make(DType::kI32, {B});
    }
    if (family_ == model::ModelFamily::kT5) {
      b.encoder_tokens = make(DType::kI32, {B, encoder_seq_length_});
      b.encoder_lengths = make(DType::kI32, {B});
    }
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
  if (encoder_tokens.view().defined()) {
    b.encoder_tokens = encoder_tokens.view();
    b.encoder_lengths = encoder_lengths.view();
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
  const data::T5SampleSource* t5 = source.t5();
  SHARDLM_REQUIRE((bert != nullptr) == (family_ == model::ModelFamily::kBert) &&
                      (t5 != nullptr) == (family_ == model::ModelFamily::kT5),
                  ErrorKind::kInternal,
                  "load_batch: the sample source's kind (GPT windows, BERT or T5 samples) does "
                  "not match the model family the staging was built for");
  const double mask_sum = bert ? stage_masked_lm(*bert, sample_indices)
                          : t5 ? stage_t5(*t5, sample_indices)
                               : stage_windows(source, sample_indices);
  if (device_.device().is_cpu()) return host_.batch(mask_sum);
  for (auto [dev, host] : {std::pair{&device_buffers_.tokens, &host_.tokens},
                           {&device_buffers_.targets, &host_.targets},
                           {&device_buffers_.mask, &host_.mask},
                           {&device_buffers_.token_types, &host_.token_types},
                           {&device_buffers_.lengths, &host_.lengths},
                           {&device_buffers_.order, &host_.order},
                           {&device_buffers_.encoder_tokens, &host_.encoder_tokens},
                           {&device_buffers_.encoder_lengths, &host_.encoder_lengths}})
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

double BatchStaging::stage_t5(const data::T5SampleSource& source,
                              std::span<const int64_t> indices) {
  const int64_t B = micro_batch_, TE = encoder_seq_length_, TD = seq_length_;
  SHARDLM_REQUIRE(source.encoder_seq_length() == TE && source.decoder_seq_length() == TD,
                  ErrorKind::kInvalidConfig,
                  "T5 samples of encoder/decoder length " +
                      std::to_string(source.encoder_seq_length()) + "/" +
                      std::to_string(source.decoder_seq_length()) + " for a model of " +
                      std::to_string(TE) + "/" + std::to_string(TD) +
                      " (--seq-length / --decoder-seq-length)");
  std::vector<int32_t> encoder(TE), decoder(TD), labels(TD);
  std::vector<float> mask(TD);
  double mask_sum = 0;
  // Token ids must be in the vocabulary; labels may also be -1 (padding).
  auto check_id = [&](int64_t index, int32_t id, const char* what, int32_t lowest) {
    SHARDLM_REQUIRE(id >= lowest && id < vocab_size_, ErrorKind::kCorruptData,
                    "T5 sample " + std::to_string(index) + " holds " + what + " id " +
                        std::to_string(id) + " outside the vocabulary of size " +
                        std::to_string(vocab_size_) +
                        "; check --vocab-size / --tokenizer-type / --vocab-extra-ids against "
                        "the data");
  };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t index = indices[static_cast<size_t>(b)];
    data::T5SampleView view{encoder, decoder, labels, mask};
    source.get(index % source.size(), view);
    for (int64_t t = 0; t < TE; ++t) {
      check_id(index, encoder[t], "encoder token", 0);
      host_.encoder_tokens.view().data<int32_t>()[b * TE + t] = encoder[t];
    }
    for (int64_t t = 0; t < TD; ++t) {
      const int64_t i = b * TD + t;
      check_id(index, decoder[t], "decoder token", 0);
      check_id(index, labels[t], "label", -1);
      host_.tokens.view().data<int32_t>()[i] = decoder[t];
      // Padding has no label (-1): any valid id, left out by the loss mask.
      host_.targets.view().data<int32_t>()[i] = labels[t] >= 0 ? labels[t] : 0;
      store_mask(host_.mask.view(), i, mask[t]);
      mask_sum += mask[t];
    }
    host_.encoder_lengths.view().data<int32_t>()[b] = std::max<int32_t>(view.encoder_length, 1);
  }
  return mask_sum;
}

}  // namespace shardlm::train
