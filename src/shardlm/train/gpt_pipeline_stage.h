// GPTPipelineStage: the GPT model chunks of one pipeline rank as a parallel::PipelineStage, so
// run_pipeline_schedule (parallel/executor.h) can train them (DESIGN §2.7).
//
// Chunk c of this rank is a model::GPTModel holding that virtual stage's layers (plus the
// embedding on virtual stage 0 and the loss head on the last). Several micro-batches are in
// flight, so every chunk keeps slots of activations: forward(c, m) takes a free slot of chunk c,
// backward(c, m) uses and frees it. slots_per_chunk() sizes them from the schedule itself (the
// most micro-batches of a chunk with forward done and backward not, in the rank's program
// order), never from M.
//
// What the trainer supplies (Callbacks): the rank's data of micro-batch m (tokens on the
// embedding chunk, targets / loss mask on the head chunk; the batch must stay valid from the
// forward to the backward of m), the StepContext of m (dropout keys), and hooks around every
// backward (data-parallel gradient sync: begin/end of a micro-batch's gradients).
// The loss: forward on the head chunk returns the micro-batch's loss; loss_sum() adds them up
// over the step (0 on ranks without the head).
//
// forward_only() runs one micro-batch through every virtual stage in order without a schedule
// (evaluation): blocking receive of the input, forward, blocking send of the output.
//
// Thread contract: the rank's thread. Ownership: borrows the chunks; owns nothing else.
//
//   GPTPipelineStage stage(chunks, dtype, device, mbs, callbacks);
//   stage.begin_step(loss_scale / M);
//   parallel::run_pipeline_schedule(plan.schedule, p2p, stage);
//   double loss = stage.loss_sum() / M;   // last stage only
#pragma once

#include <functional>
#include <map>
#include <vector>

#include "shardlm/dist/communicator.h"
#include "shardlm/model/families/gpt_model.h"
#include "shardlm/parallel/executor.h"
#include "shardlm/parallel/schedule.h"

namespace shardlm::train {

class GPTPipelineStage final : public parallel::PipelineStage {
 public:
  struct Callbacks {
    std::function<model::Batch(int microbatch)> batch;
    std::function<model::StepContext(int microbatch)> step;
    std::function<void(int chunk, int microbatch)> before_backward;  // may be empty
    std::function<void(int chunk, int microbatch)> after_backward;   // may be empty
  };

  // chunks[c]: this rank's chunk c, activations allocated with at least slots_per_chunk(c)
  // slots. pipeline_rank / num_stages place the chunks (virtual stage c·P + rank).
  GPTPipelineStage(std::vector<model::GPTModel*> chunks, int pipeline_rank, int num_stages,
                   DType dtype, Device device, int64_t micro_batch, Callbacks callbacks);

  // Per chunk of `rank`, the most micro-batches in flight at once in the schedule's action
  // order (forwards done minus backwards done); at least 1.
  static std::vector<int> slots_per_chunk(const parallel::PipelineSchedule& schedule, int rank);

  // Before every step: the backward loss scale (1/M, times the fp16 loss scale) and a fresh
  // loss sum; throws kInternal if a micro-batch of the last step still holds a slot.
  void begin_step(double loss_scale);
  double loss_sum() const { return loss_sum_; }

  parallel::BoundarySpec input_spec(int chunk) const override;
  parallel::BoundarySpec output_spec(int chunk) const override;
  void forward(int chunk, int microbatch, const Tensor& input, const Tensor& output) override;
  void backward(int chunk, int microbatch, const Tensor& output_grad,
                const Tensor& input_grad) override;

  // Evaluation: micro-batch `microbatch` through all virtual stages (see above) over the
  // pipeline group `pp` (group rank == stage). Returns the loss on the rank holding the last
  // virtual stage, 0 elsewhere.
  double forward_only(int microbatch, dist::Communicator& pp);

 private:
  struct ChunkSlots {
    std::vector<int> free;            // slots not in use
    std::map<int, int> of_microbatch;  // micro-batch -> slot
  };
  parallel::BoundarySpec boundary() const;

  std::vector<model::GPTModel*> chunks_;
  int rank_ = 0, num_stages_ = 1;
  DType dtype_;
  Device device_;
  int64_t micro_batch_ = 0;
  Callbacks cb_;
  std::vector<ChunkSlots> slots_;  // [chunk]
  double loss_scale_ = 1.0;
  double loss_sum_ = 0;
};

}  // namespace shardlm::train
