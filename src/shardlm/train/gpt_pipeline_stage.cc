// GPTPipelineStage: GPT chunks behind the pipeline executor's stage interface.
#include "shardlm/train/gpt_pipeline_stage.h"

#include <algorithm>
#include <string>

#include "shardlm/base/check.h"
#include "shardlm/base/error.h"

namespace shardlm::train {

GPTPipelineStage::GPTPipelineStage(std::vector<model::GPTModel*> chunks, int pipeline_rank,
                                   int num_stages, DType dtype, Device device,
                                   int64_t micro_batch, Callbacks callbacks)
    : chunks_(std::move(chunks)),
      rank_(pipeline_rank),
      num_stages_(num_stages),
      dtype_(dtype),
      device_(device),
      micro_batch_(micro_batch),
      cb_(std::move(callbacks)),
      slots_(chunks_.size()) {
  SHARDLM_CHECK(!chunks_.empty() && cb_.batch && cb_.step);
  for (size_t c = 0; c < chunks_.size(); ++c)
    for (int s = chunks_[c]->activation_slots(); s-- > 0;) slots_[c].free.push_back(s);
}

std::vector<int> GPTPipelineStage::slots_per_chunk(const parallel::PipelineSchedule& schedule,
                                                   int rank) {
  std::vector<int> now(static_cast<size_t>(schedule.num_chunks), 0);
  std::vector<int> peak(now.size(), 1);
  for (const parallel::Action& a : schedule.ranks[static_cast<size_t>(rank)]) {
    int& n = now[static_cast<size_t>(a.chunk)];
    if (a.kind == parallel::ActionKind::kForward) ++n;
    if (a.kind == parallel::ActionKind::kBackward) --n;
    peak[static_cast<size_t>(a.chunk)] = std::max(peak[static_cast<size_t>(a.chunk)], n);
  }
  return peak;
}

void GPTPipelineStage::begin_step(double loss_scale) {
  for (size_t c = 0; c < slots_.size(); ++c)
    SHARDLM_REQUIRE(slots_[c].of_microbatch.empty(), ErrorKind::kInternal,
                    "pipeline chunk " + std::to_string(c) + " still holds " +
                        std::to_string(slots_[c].of_microbatch.size()) +
                        " micro-batches from the last step (a forward without its backward)");
  loss_scale_ = loss_scale;
  loss_sum_ = 0;
}

parallel::BoundarySpec GPTPipelineStage::boundary() const {
  return {dtype_, chunks_.front()->boundary_shape(micro_batch_), device_};
}
parallel::BoundarySpec GPTPipelineStage::input_spec(int) const { return boundary(); }
parallel::BoundarySpec GPTPipelineStage::output_spec(int) const { return boundary(); }

void GPTPipelineStage::forward(int chunk, int microbatch, const Tensor& input,
                               const Tensor& output) {
  ChunkSlots& s = slots_.at(static_cast<size_t>(chunk));
  const int slots = chunks_[static_cast<size_t>(chunk)]->activation_slots();
  SHARDLM_REQUIRE(!s.free.empty(), ErrorKind::kInternal,
                  "pipeline rank " + std::to_string(rank_) + " chunk " + std::to_string(chunk) +
                      ": no free activation slot for micro-batch " + std::to_string(microbatch) +
                      " (" + std::to_string(slots) +
                      " slots; the schedule holds more micro-batches than slots_per_chunk says)");
  const int slot = s.free.back();
  s.free.pop_back();
  SHARDLM_CHECK(s.of_microbatch.emplace(microbatch, slot).second);
  model::StepContext step = cb_.step(microbatch);
  const model::Batch batch = cb_.batch(microbatch);
  loss_sum_ += chunks_[static_cast<size_t>(chunk)]->forward(step, batch, slot, input, output);
}

void GPTPipelineStage::backward(int chunk, int microbatch, const Tensor& output_grad,
                                const Tensor& input_grad) {
  ChunkSlots& s = slots_.at(static_cast<size_t>(chunk));
  auto it = s.of_microbatch.find(microbatch);
  SHARDLM_REQUIRE(it != s.of_microbatch.end(), ErrorKind::kInternal,
                  "pipeline rank " + std::to_string(rank_) + " chunk " + std::to_string(chunk) +
                      ": backward of micro-batch " + std::to_string(microbatch) +
                      " before its forward");
  const int slot = it->second;
  model::StepContext step = cb_.step(microbatch);
  const model::Batch batch = cb_.batch(microbatch);
  if (cb_.before_backward) cb_.before_backward(chunk, microbatch);
  chunks_[static_cast<size_t>(chunk)]->backward(step, batch, slot, loss_scale_, output_grad,
                                                input_grad);
  if (cb_.after_backward) cb_.after_backward(chunk, microbatch);
  s.of_microbatch.erase(it);
  s.free.push_back(slot);
}

double GPTPipelineStage::forward_only(int microbatch, dist::Communicator& pp) {
  const int V = static_cast<int>(chunks_.size());
  const parallel::BoundarySpec spec = boundary();
  OwnedTensor input = OwnedTensor::empty(spec.dtype, spec.shape, spec.device);
  OwnedTensor output = OwnedTensor::empty(spec.dtype, spec.shape, spec.device);
  model::StepContext step = cb_.step(microbatch);
  const model::Batch batch = cb_.batch(microbatch);
  double loss = 0;
  // Virtual stages in order, so every rank's sends and receives follow one chain.
  for (int c = 0; c < V; ++c) {
    ChunkSlots& s = slots_[static_cast<size_t>(c)];
    SHARDLM_CHECK(!s.free.empty());
    const bool first = parallel::is_first_virtual_stage(rank_, c);
    const bool last = parallel::is_last_virtual_stage(rank_, c, num_stages_, V);
    if (!first) pp.recv(input.view(), (rank_ + num_stages_ - 1) % num_stages_);
    loss += chunks_[static_cast<size_t>(c)]->forward(step, batch, s.free.back(),
                                                     first ? Tensor() : input.view(),
                                                     last ? Tensor() : output.view());
    if (!last) pp.send(output.view(), (rank_ + 1) % num_stages_);
  }
  return loss;
}

}  // namespace shardlm::train
